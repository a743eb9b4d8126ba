"""fcm_inspect: print every field of an FCM container, its payload units with
their CRC status, the header overhead, and the NAL units of VVC payloads."""

from __future__ import annotations

import argparse
import enum
import json
from typing import Any

from codec.apps import _cli
from codec.bitstream import InspectReport, UnitType, inspect_container, parse_container, syntax
from codec.errors import BitstreamError
from codec.files import read_input_file
from codec.modes import mode_by_id

EXAMPLES = """\
examples:
  fcm_inspect baseball.bin
  fcm_inspect baseball.bin --json | python -m json.tool

A damaged file is still shown as far as it parses; the error is printed last.
fcm_inspect runs no external tool: exit status 0 a valid container, 2 an invalid
one (or bad arguments / input); 1 is the other applications' external-tool failure.
"""

# header field -> its id table, from the container syntax (the IntEnum that validates it)
_ENUM_FIELDS: dict[str, type[enum.IntEnum]] = syntax.enum_fields(syntax.header_body) | syntax.enum_fields(
    syntax.header_body_v2
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fcm_inspect",
        description="Show the header fields, payload units (type, size, CRC) and VVC NAL units of an FCM container.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="IN.bin", help="FCM container file")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument(
        "--codec-weights",
        metavar="PATH",
        help="codec-model weights to check the stream against instead of the shipped ones",
    )
    _cli.add_common_options(p, "fcm_inspect", threads=False)
    return p


def _enum_name(field: str, value: Any) -> str | None:
    if field == "mode_id":
        try:
            return mode_by_id(int(value)).name.upper()
        except BitstreamError:
            pass
    cls = _ENUM_FIELDS.get(field)
    if cls is None:
        return None
    try:
        return cls(int(value)).name
    except ValueError:
        return "RESERVED"


def _jsonable(field: str, value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, enum.IntEnum):
        return int(value)
    if isinstance(value, dict):
        return {k: _jsonable(k, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(field, item) for item in value]
    return value


def _nal_units(data: bytes) -> tuple[list[dict[str, Any]], str | None]:
    from codec.inner.vvc import parse_nal_units

    try:
        nals = parse_nal_units(data)
    except ValueError as e:
        return [], _cli.one_line(e)
    return [
        {
            "offset": n.offset,
            "size": n.size,
            "nal_unit_type": n.nal_unit_type,
            "type_name": n.type_name,
            "layer_id": n.layer_id,
            "temporal_id": n.temporal_id,
        }
        for n in nals
    ], None


def _image_info(data: bytes) -> dict[str, Any]:
    """The fields of an IMAGE_INFO unit as written (parsed leniently: a damaged name is shown too)."""
    try:
        value = syntax.image_info.parse(data, validate=False)
    except Exception as e:  # construct's errors: the unit is shorter than its syntax
        return {"error": f"cannot parse image_info( ): {_cli.one_line(e)}"}
    present = bool(value.image_info_flags & syntax.IMAGE_ID_PRESENT)
    return {
        "image_info_flags": value.image_info_flags,
        "image_id": value.image_id if present else None,
        "source_name": value.source_name,
    }


def report_dict(path: str, report: InspectReport) -> dict[str, Any]:
    out: dict[str, Any] = {"file": path, "size": report.total_size}
    if report.version is not None:
        out["version"] = f"{report.version[0]}.{report.version[1]}"
        out["header_size"] = report.header_size
        out["header_crc_ok"] = report.header_crc_ok
        fields = {k: _jsonable(k, v) for k, v in (report.header_fields or {}).items()}
        out["header"] = fields
        out["header_names"] = {k: n for k in fields if (n := _enum_name(k, fields[k])) is not None}
    units = []
    for u in report.units:
        item = {
            "index": u.index,
            "offset": u.offset,
            "unit_type": u.unit_type,
            "type_name": u.type_name,
            "flags": u.flags,
            "scale_index": u.scale_index,
            "size": u.size,
            "crc32": f"0x{u.crc_stored:08x}",
            "crc_ok": u.crc_ok,
        }
        if u.unit_type == UnitType.VVC_NAL_STREAM:
            item["nal_units"], err = _nal_units(u.data)
            if err:
                item["nal_error"] = err
        elif u.unit_type == UnitType.IMAGE_INFO:
            item["image_info"] = _image_info(u.data)
        units.append(item)
    out["payload_units"] = units
    out["payload_bytes"] = report.payload_bytes
    out["overhead_bytes"] = report.overhead_bytes
    out["valid"] = report.error is None
    if report.error is not None:
        out["error"] = {"class": type(report.error).__name__, "message": _cli.one_line(report.error)}
    return out


def print_text(d: dict[str, Any]) -> None:
    print(f"file {d['file']}: {d['size']} bytes")
    if "version" not in d:
        print("  (no container header could be parsed)")
    else:
        crc = "ok" if d["header_crc_ok"] else "MISMATCH"
        print(f"container version {d['version']}, header {d['header_size']} bytes, header_crc32 {crc}")
        names = d["header_names"]
        for k, v in d["header"].items():
            if k == "scales":
                continue
            if k == "mode_header" and isinstance(v, dict):  # container 2.0: the mode's own syntax
                for mk, mv in v.items():
                    print(f"  mode_header.{mk:<22} {mv}")
                continue
            suffix = f" ({names[k]})" if k in names else ""
            print(f"  {k:<22} {v}{suffix}")
        for i, s in enumerate(d["header"].get("scales", [])):
            print(f"  scales[{i}]: " + ", ".join(f"{k} {v}" for k, v in s.items()))
    for u in d["payload_units"]:
        scale = "all" if u["scale_index"] == 255 else u["scale_index"]
        crc = "ok" if u["crc_ok"] else "MISMATCH"
        req = "required" if u["flags"] & 1 else "optional"
        print(
            f"payload unit {u['index']}: {u['type_name']} ({u['unit_type']}), {u['size']} bytes at offset "
            f"{u['offset']}, {req}, scale {scale}, crc32 {u['crc32']} {crc}"
        )
        for n in u.get("nal_units", []):
            print(
                f"    NAL {n['type_name']:<12} type {n['nal_unit_type']:>2}  {n['size']:>8} bytes  "
                f"layer {n['layer_id']} tid {n['temporal_id']}"
            )
        if "nal_error" in u:
            print(f"    NAL units: {u['nal_error']}")
        if "image_info" in u:
            info = u["image_info"]
            if "error" in info:
                print(f"    {info['error']}")
            else:
                image_id = "not recorded" if info["image_id"] is None else info["image_id"]
                # JSON quoting: a damaged name's control characters are shown escaped, never sent to the terminal
                name = json.dumps(info["source_name"], ensure_ascii=False) if info["source_name"] else "not recorded"
                print(f"    image_id {image_id}, source_name {name}")
    total = d["size"]
    share = 100.0 * d["overhead_bytes"] / total if total else 0.0
    print(f"payload {d['payload_bytes']} bytes; header overhead {d['overhead_bytes']} bytes ({share:.2f}%)")
    if not d["valid"]:
        print(f"INVALID: {d['error']['class']}: {d['error']['message']}")


def _inspect(args: argparse.Namespace) -> int:
    data = read_input_file(args.input, "bitstream")
    report = inspect_container(data)
    if report.error is None:  # container-level valid: also check the mode's payload structure
        parsed = parse_container(data)
        try:
            mode_by_id(parsed.header.mode_id).check(parsed.header, parsed.units, args.codec_weights)
        except BitstreamError as e:
            report.error = e
    d = report_dict(args.input, report)
    if args.json:
        print(json.dumps(d, indent=2))
    elif not args.quiet:
        print_text(d)
    if report.error is not None:
        raise report.error  # one line on stderr and exit 2, via run_app
    return _cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return _cli.run_app("fcm_inspect", build_parser(), _inspect, argv)


if __name__ == "__main__":
    raise SystemExit(main())
