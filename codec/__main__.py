"""``python -m codec enc|dec|inspect ...``: the applications without their console scripts
(fcm_enc, fcm_dec, fcm_inspect), e.g. from a virtual environment that is not activated.
``python -m codec.apps.fcm_enc ...`` and the others run them too."""

from __future__ import annotations

import sys

APPS = {"enc": "fcm_enc", "dec": "fcm_dec", "inspect": "fcm_inspect"}

USAGE = """usage: python -m codec {enc,dec,inspect} [ARGS ...]
       python -m codec --version

  enc      fcm_enc: images -> FCM containers   (python -m codec enc --help)
  dec      fcm_dec: containers -> features, detections
  inspect  fcm_inspect: the fields and units of a container"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    if args[0] == "--version":
        from codec.apps._cli import version_text

        print(version_text("fcm-codec"))
        return 0
    app = APPS.get(args[0]) or (args[0] if args[0] in APPS.values() else None)
    if app is None:
        print(f"{USAGE}\n\npython -m codec: error: unknown application {args[0]!r}", file=sys.stderr)
        return 2
    import importlib

    return int(importlib.import_module(f"codec.apps.{app}").main(args[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
