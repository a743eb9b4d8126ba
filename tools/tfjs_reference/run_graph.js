#!/usr/bin/env node
// Runs a TF.js graph model (model.json + weight shards) from a local directory
// with the pure-JS @tensorflow/tfjs package on the `cpu` backend, and writes
// each output as raw little-endian float32 plus a JSON index.
//
// Usage (one of):
//   node run_graph.js --model M.json --input NAME=FILE.f32:1,3,416,416 [--input ...]
//                     [--output NAME ...] --out-dir DIR
//   node run_graph.js --job job.json
// job.json: {"model": "M.json", "inputs": [{"name": "input_1", "file": "x.f32", "shape": [1,3,416,416]}],
//            "outputs": ["Identity", ...] (optional, default: the model's signature outputs),
//            "out_dir": "DIR"}
// Relative paths in a job file are relative to the job file's folder.
// DIR/outputs.json: {"tfjs_version", "backend", "model", "inputs": [...],
//                    "outputs": [{"name", "file", "shape", "dtype"}]}
// Exit status: 0 on success, 2 on a usage error, 1 on any other error (message on stderr).
'use strict';

const fs = require('fs');
const path = require('path');

class UsageError extends Error {}

function parseShape(text) {
  const dims = text.split(',').map((s) => s.trim());
  if (dims.length === 0 || dims.some((d) => !/^[0-9]+$/.test(d))) {
    throw new UsageError(`bad shape ${JSON.stringify(text)}: expected comma-separated non-negative integers`);
  }
  return dims.map((d) => parseInt(d, 10));
}

function parseArgs(argv) {
  const args = { model: null, inputs: [], outputs: [], outDir: null, job: null };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    const value = argv[i + 1];
    const needValue = () => {
      if (value === undefined) throw new UsageError(`${key} needs a value`);
      i++;
      return value;
    };
    if (key === '--model') args.model = needValue();
    else if (key === '--out-dir') args.outDir = needValue();
    else if (key === '--job') args.job = needValue();
    else if (key === '--output') args.outputs.push(needValue());
    else if (key === '--input') {
      // NAME=FILE:SHAPE ; NAME may be empty ("=x.f32:1,3,4,4") for a single-input model
      const spec = needValue();
      const m = /^([^=]*)=(.+):([0-9,]+)$/.exec(spec);
      if (!m) throw new UsageError(`bad --input ${JSON.stringify(spec)}: expected NAME=FILE:D0,D1,...`);
      args.inputs.push({ name: m[1] || null, file: m[2], shape: parseShape(m[3]) });
    } else if (key === '-h' || key === '--help') {
      args.help = true;
    } else throw new UsageError(`unknown argument ${JSON.stringify(key)}`);
  }
  if (args.job) {
    if (args.model || args.inputs.length || args.outputs.length || args.outDir) {
      throw new UsageError('--job cannot be combined with --model/--input/--output/--out-dir');
    }
    const jobDir = path.dirname(path.resolve(args.job));
    const job = JSON.parse(fs.readFileSync(args.job, 'utf8'));
    const rel = (p) => path.resolve(jobDir, p);
    if (typeof job.model !== 'string' || typeof job.out_dir !== 'string' || !Array.isArray(job.inputs)) {
      throw new UsageError('job file needs "model" (string), "inputs" (list) and "out_dir" (string)');
    }
    args.model = rel(job.model);
    args.outDir = rel(job.out_dir);
    args.inputs = job.inputs.map((inp) => {
      if (typeof inp.file !== 'string' || !Array.isArray(inp.shape)) {
        throw new UsageError('each job input needs "file" (string) and "shape" (list)');
      }
      return { name: inp.name || null, file: rel(inp.file), shape: parseShape(inp.shape.join(',')) };
    });
    args.outputs = Array.isArray(job.outputs) ? job.outputs.slice() : [];
  }
  if (!args.help && (!args.model || !args.outDir || args.inputs.length === 0)) {
    throw new UsageError('need --model, --out-dir and at least one --input (or --job)');
  }
  return args;
}

// A custom IOHandler: reads model.json and its weight shards with fs, so no
// fetch / tfjs-node is needed.
function fileIOHandler(modelJsonPath) {
  return {
    load: async () => {
      const modelJson = JSON.parse(fs.readFileSync(modelJsonPath, 'utf8'));
      if (!modelJson.modelTopology || !Array.isArray(modelJson.weightsManifest)) {
        throw new Error(`${modelJsonPath}: not a TF.js model.json (no modelTopology / weightsManifest)`);
      }
      const dir = path.dirname(modelJsonPath);
      const weightSpecs = [];
      const buffers = [];
      for (const group of modelJson.weightsManifest) {
        weightSpecs.push(...group.weights);
        for (const p of group.paths) buffers.push(fs.readFileSync(path.join(dir, p)));
      }
      const all = Buffer.concat(buffers);
      const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
      return {
        modelTopology: modelJson.modelTopology,
        weightSpecs,
        weightData,
        format: modelJson.format,
        generatedBy: modelJson.generatedBy,
        convertedBy: modelJson.convertedBy,
        signature: modelJson.signature,
        userDefinedMetadata: modelJson.userDefinedMetadata,
        modelInitializer: modelJson.modelInitializer,
      };
    },
  };
}

function readFloat32(file, shape) {
  const buf = fs.readFileSync(file);
  const n = shape.reduce((a, b) => a * b, 1);
  if (buf.byteLength !== 4 * n) {
    throw new Error(`${file}: ${buf.byteLength} bytes, expected ${4 * n} for float32 shape [${shape}]`);
  }
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = buf.readFloatLE(4 * i);
  return out;
}

function writeFloat32(file, values) {
  const buf = Buffer.alloc(4 * values.length);
  for (let i = 0; i < values.length; i++) buf.writeFloatLE(values[i], 4 * i);
  fs.writeFileSync(file, buf);
}

const stripPort = (name) => name.replace(/:0$/, '');

async function main(argv) {
  const args = parseArgs(argv);
  if (args.help) {
    process.stdout.write(fs.readFileSync(__filename, 'utf8').split('\n').slice(1, 16).join('\n') + '\n');
    return;
  }
  // The pure-JS package prints a hint about tfjs-node (and about execute vs
  // executeAsync) through console.warn; drop those two, keep any other warning.
  const warn = console.warn;
  console.warn = (...msg) => {
    const text = msg.join(' ');
    if (/tfjs-node|^=+$|^\s*$|You can use model\.execute\(\) instead/.test(text)) return;
    warn(...msg);
  };
  const tf = require('@tensorflow/tfjs');
  await tf.setBackend('cpu');
  await tf.ready();
  if (tf.getBackend() !== 'cpu') throw new Error(`could not select the cpu backend (got ${tf.getBackend()})`);

  const model = await tf.loadGraphModel(fileIOHandler(path.resolve(args.model)));
  const modelInputs = model.inputs.map((t) => stripPort(t.name));
  const feeds = {};
  const inputRecords = [];
  for (const inp of args.inputs) {
    let name = inp.name;
    if (!name) {
      if (args.inputs.length !== 1 || modelInputs.length !== 1) {
        throw new UsageError(`input names are required: the model has inputs ${modelInputs.join(', ')}`);
      }
      name = modelInputs[0];
    }
    name = stripPort(name);
    if (!modelInputs.includes(name)) {
      throw new UsageError(`unknown input ${name}; the model has ${modelInputs.join(', ')}`);
    }
    feeds[name] = tf.tensor(readFloat32(inp.file, inp.shape), inp.shape, 'float32');
    inputRecords.push({ name, file: inp.file, shape: inp.shape });
  }
  const outputNames = (args.outputs.length ? args.outputs : model.outputs.map((t) => t.name)).map(stripPort);

  // execute() is synchronous and enough for graphs without control flow; the
  // others (dynamic shapes, NonMaxSuppression, loops) need executeAsync().
  let results;
  try {
    results = model.execute(feeds, outputNames);
  } catch (err) {
    if (!/executeAsync|dynamic|control flow/i.test(err.message)) throw err;
    results = await model.executeAsync(feeds, outputNames);
  }
  if (!Array.isArray(results)) results = [results];

  fs.mkdirSync(args.outDir, { recursive: true });
  const records = [];
  for (let k = 0; k < outputNames.length; k++) {
    const t = results[k];
    const values = t.dtype === 'float32' ? await t.data() : Float32Array.from(await t.data());
    const file = `${outputNames[k].replace(/[^A-Za-z0-9_.-]/g, '_')}.f32`;
    writeFloat32(path.join(args.outDir, file), values);
    records.push({ name: outputNames[k], file, shape: t.shape, dtype: t.dtype });
  }
  const index = {
    tfjs_version: tf.version.tfjs,
    backend: tf.getBackend(),
    model: path.resolve(args.model),
    inputs: inputRecords,
    outputs: records,
  };
  fs.writeFileSync(path.join(args.outDir, 'outputs.json'), JSON.stringify(index, null, 2) + '\n');
}

main(process.argv.slice(2)).then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`run_graph.js: ${err instanceof UsageError ? 'usage: ' : ''}${err.message}\n`);
    process.exit(err instanceof UsageError ? 2 : 1);
  },
);
