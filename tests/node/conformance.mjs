#!/usr/bin/env node
// Replays the conformance vectors (lua/conformance/*.json) against a Redis server from Node.js with
// ioredis: the second-language proof of the script contract (lua/README.md). Written from
// lua/README.md and lua/conformance/README.md alone.
//
//   node tests/node/conformance.mjs --url redis://user:pass@127.0.0.1:6380/0 --transport evalsha|fcall [file.json ...]
//
// Without files it replays every lua/conformance/*.json (found relative to this script). Each file
// starts with FLUSHDB, so give it a private server and a user allowed FLUSHDB, SCRIPT LOAD or
// FUNCTION LOAD and the raw commands the vectors send. Prints one line per file, then one JSON line
// {"files","steps","calls","failed","words",...}; exits 1 if any file failed, 2 on a usage or
// connection error.
//
// Replies are read as Buffers (bulk and status strings) and, with stringNumbers, integers as decimal
// strings, so bytes and large integers are compared exactly and an integer reply is never mistaken
// for a bulk string.

import { createHash } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import Redis from 'ioredis';

const HERE = dirname(fileURLToPath(import.meta.url));
const LUA = resolve(HERE, '..', '..', 'lua');
const LIBRARY = 'pylivermore_v2';
const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const DECIMAL = /^-?\d+$/;
const BAD_ARGS = 'ERR pylivermore bad-args';

// The keys a step of each kind may carry (anything else is a malformed vector, not silently ignored).
const STEP_KEYS = {
  call: new Set(['call', 'keys', 'args', 'reply', 'error', 'conflict', 'note']),
  redis: new Set(['redis', 'reply', 'note']),
  hash: new Set(['hash', 'fields', 'exact', 'note']),
  log: new Set(['log', 'entries', 'note']),
  key: new Set(['key', 'type', 'pttl', 'note']),
};
const FILE_KEYS = new Set(['name', 'description', 'covers', 'steps']); // covers: metadata runners ignore

class Mismatch extends Error {}

function usage(message) {
  process.stderr.write(`conformance.mjs: ${message}\n`);
  process.stderr.write('usage: node conformance.mjs --url redis://... --transport evalsha|fcall [files...]\n');
  process.exit(2);
}

function parseArgs(argv) {
  const out = { url: null, transport: null, files: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--url') out.url = argv[++i];
    else if (a === '--transport') out.transport = argv[++i];
    else if (a.startsWith('--url=')) out.url = a.slice(6);
    else if (a.startsWith('--transport=')) out.transport = a.slice(12);
    else if (a.startsWith('--')) usage(`unknown option ${a}`);
    else out.files.push(resolve(a));
  }
  if (!out.url) usage('--url is required');
  if (out.transport !== 'evalsha' && out.transport !== 'fcall') usage('--transport must be evalsha or fcall');
  if (out.files.length === 0) {
    const dir = join(LUA, 'conformance');
    out.files = readdirSync(dir)
      .filter((f) => f.endsWith('.json'))
      .sort()
      .map((f) => join(dir, f));
  }
  return out;
}

// -- replies as values ------------------------------------------------------------------------

// A reply element is: null (nil), a Buffer (bulk or status string), a string (an integer reply, as
// decimal text: stringNumbers), an Array, or an Error (an error reply nested in an array).
const isInt = (r) => typeof r === 'string';
const isStr = (r) => Buffer.isBuffer(r);

function show(r) {
  if (r === null || r === undefined) return 'nil';
  if (isStr(r)) return JSON.stringify(r.toString('utf8'));
  if (isInt(r)) return `(integer) ${r}`;
  if (Array.isArray(r)) return `[${r.map(show).join(', ')}]`;
  if (r instanceof Error) return `(error) ${r.message}`;
  return String(r);
}

/** The reply as a capture (a string): an integer's decimal text, a string's UTF-8 text. */
function asText(r) {
  if (isStr(r)) return r.toString('utf8');
  if (isInt(r)) return r;
  throw new Mismatch(`expected a string or integer to capture, got ${show(r)}`);
}

/** The reply as a BigInt when it is a decimal integer (integer reply or decimal string), else null. */
function asInteger(r) {
  const text = isInt(r) ? r : isStr(r) ? r.toString('utf8') : null;
  return text !== null && DECIMAL.test(text) ? BigInt(text) : null;
}

// -- matchers ---------------------------------------------------------------------------------

class Run {
  constructor() {
    this.captures = new Map();
  }

  /** `${name}` replaced by its capture; a missing capture fails the file. */
  subst(value, where) {
    if (typeof value === 'number') {
      if (!Number.isSafeInteger(value)) throw new Mismatch(`${where}: number ${value} is not an exact integer`);
      return String(value);
    }
    if (typeof value !== 'string') throw new Mismatch(`${where}: expected a string, got ${JSON.stringify(value)}`);
    return value.replace(/\$\{([^}]*)\}/g, (_, name) => {
      if (!this.captures.has(name)) throw new Mismatch(`${where}: no capture named ${JSON.stringify(name)}`);
      return this.captures.get(name);
    });
  }

  capture(name, value) {
    if (typeof name !== 'string' || name === '') throw new Mismatch(`capture without a name ("as")`);
    this.captures.set(name, value);
  }

  /** Throws a Mismatch unless reply `r` matches matcher `m`; `absent` says a field/element is missing. */
  match(m, r, where) {
    const fail = (why) => {
      throw new Mismatch(`${where}: ${why}`);
    };
    if (r instanceof Error) fail(`got the error ${JSON.stringify(r.message)}, expected ${JSON.stringify(m)}`);
    if (m === null) {
      if (r !== null && r !== undefined) fail(`expected nil/absent, got ${show(r)}`);
      return;
    }
    if (typeof m === 'string') {
      if (!isStr(r)) fail(`expected the string ${JSON.stringify(m)}, got ${show(r)}`);
      if (!r.equals(Buffer.from(m, 'utf8'))) fail(`expected ${JSON.stringify(m)}, got ${show(r)}`);
      return;
    }
    if (typeof m === 'number') {
      if (!Number.isSafeInteger(m)) fail(`matcher ${m} is not an exact integer (JSON numbers above 2^53 lose digits)`);
      if (!isInt(r)) fail(`expected the integer ${m}, got ${show(r)}`);
      if (BigInt(r) !== BigInt(m)) fail(`expected (integer) ${m}, got ${show(r)}`);
      return;
    }
    if (Array.isArray(m)) {
      if (!Array.isArray(r)) fail(`expected an array of ${m.length}, got ${show(r)}`);
      if (r.length !== m.length) fail(`expected an array of ${m.length} elements, got ${r.length}: ${show(r)}`);
      m.forEach((mi, i) => this.match(mi, r[i], `${where}[${i}]`));
      return;
    }
    if (typeof m !== 'object' || typeof m.$ !== 'string') fail(`not a matcher: ${JSON.stringify(m)}`);
    const present = r !== null && r !== undefined;
    switch (m.$) {
      case 'any':
        if (!present) fail('expected a value, got nil/absent');
        return;
      case 'iso':
        if (!isStr(r) || !ISO.test(r.toString('utf8'))) fail(`expected an ISO-8601 UTC timestamp with ms, got ${show(r)}`);
        return;
      case 'int': {
        const n = asInteger(r);
        if (n === null) fail(`expected a decimal integer, got ${show(r)}`);
        if (m.min !== undefined && n < bigBound(m.min, where)) fail(`expected at least ${m.min}, got ${n}`);
        if (m.max !== undefined && n > bigBound(m.max, where)) fail(`expected at most ${m.max}, got ${n}`);
        return;
      }
      case 'capture':
        if (m.like !== undefined) this.match(m.like, r, where);
        else if (!present) fail(`expected a value to capture as ${m.as}, got nil/absent`);
        this.capture(m.as, asText(r));
        return;
      case 'same': {
        if (!this.captures.has(m.as)) fail(`no capture named ${JSON.stringify(m.as)}`);
        const want = this.captures.get(m.as);
        if (!present || asText(r) !== want) fail(`expected the capture ${m.as} = ${JSON.stringify(want)}, got ${show(r)}`);
        return;
      }
      case 'gt': {
        if (!this.captures.has(m.than)) fail(`no capture named ${JSON.stringify(m.than)}`);
        const than = this.captures.get(m.than);
        if (!DECIMAL.test(than)) fail(`capture ${m.than} = ${JSON.stringify(than)} is not an integer`);
        const n = asInteger(r);
        if (n === null) fail(`expected an integer greater than ${m.than} (${than}), got ${show(r)}`);
        if (!(n > BigInt(than))) fail(`expected an integer greater than ${m.than} (${than}), got ${n}`);
        return;
      }
      default:
        fail(`unknown matcher ${JSON.stringify(m)}`);
    }
  }
}

function bigBound(value, where) {
  if (typeof value === 'number' && Number.isSafeInteger(value)) return BigInt(value);
  if (typeof value === 'string' && DECIMAL.test(value)) return BigInt(value);
  throw new Mismatch(`${where}: bound ${JSON.stringify(value)} is not an exact integer`);
}

/** A flat [f1, v1, f2, v2, ...] reply as a Map of field name (UTF-8 text) to value. */
function pairs(flat, where) {
  if (!Array.isArray(flat) || flat.length % 2 !== 0) throw new Mismatch(`${where}: expected field/value pairs, got ${show(flat)}`);
  const out = new Map();
  for (let i = 0; i < flat.length; i += 2) {
    if (!isStr(flat[i])) throw new Mismatch(`${where}: field name ${show(flat[i])} is not a string`);
    const name = flat[i].toString('utf8');
    if (out.has(name)) throw new Mismatch(`${where}: field ${name} appears twice`);
    out.set(name, flat[i + 1]);
  }
  return out;
}

function fieldsObject(fields, where) {
  if (fields === null || typeof fields !== 'object' || Array.isArray(fields)) {
    throw new Mismatch(`${where}: "fields" must be an object`);
  }
  return Object.entries(fields);
}

// -- transports -------------------------------------------------------------------------------

class Transport {
  constructor(redis, kind) {
    this.redis = redis;
    this.kind = kind;
    this.scripts = new Map(); // op -> { file, source, sha }
    for (const f of readdirSync(LUA).sort()) {
      const found = /^([a-z_]+)-(\d+|n)\.lua$/.exec(f);
      if (!found) continue;
      const source = readFileSync(join(LUA, f));
      this.scripts.set(found[1], { file: f, source, sha: createHash('sha1').update(source).digest('hex') });
    }
    if (this.scripts.size === 0) throw new Error(`no lua/<op>-<n>.lua scripts in ${LUA}`);
    this.library = kind === 'fcall' ? readFileSync(join(LUA, 'functions', 'pylivermore.lua')) : null;
    this.reloads = 0;
  }

  async load() {
    if (this.kind === 'evalsha') {
      for (const [op, s] of this.scripts) {
        const sha = (await this.redis.callBuffer('SCRIPT', 'LOAD', s.source)).toString();
        if (sha !== s.sha) throw new Error(`SCRIPT LOAD of ${s.file} answered ${sha}, its SHA-1 is ${s.sha} (${op})`);
      }
    } else {
      const name = (await this.redis.callBuffer('FUNCTION', 'LOAD', 'REPLACE', this.library)).toString();
      if (name !== LIBRARY) throw new Error(`FUNCTION LOAD answered library ${name}, expected ${LIBRARY}`);
    }
  }

  /** One script call; resolves to the reply, or to the Error of an error reply. */
  async call(op, keys, args) {
    const s = this.scripts.get(op);
    if (!s) throw new Mismatch(`no script lua/${op}-<n>.lua`);
    const send = () =>
      this.kind === 'evalsha'
        ? this.redis.callBuffer('EVALSHA', s.sha, String(keys.length), ...keys, ...args)
        : this.redis.callBuffer('FCALL', `${LIBRARY}_${op}`, String(keys.length), ...keys, ...args);
    try {
      return await send();
    } catch (err) {
      const message = String(err && err.message);
      const missing =
        this.kind === 'evalsha' ? message.startsWith('NOSCRIPT') : message.startsWith('ERR Function not found');
      if (!missing) return errorReply(err);
      // The script did not run: load it again and retry once (lua/README.md, "Loading, calling").
      this.reloads++;
      if (this.kind === 'evalsha') await this.redis.callBuffer('SCRIPT', 'LOAD', s.source);
      else await this.redis.callBuffer('FUNCTION', 'LOAD', 'REPLACE', this.library);
      try {
        return await send();
      } catch (again) {
        return errorReply(again);
      }
    }
  }
}

function errorReply(err) {
  if (err && err.name === 'ReplyError') return err;
  throw err; // a connection problem: not a reply, the run cannot go on
}

async function raw(redis, argv) {
  try {
    return await redis.callBuffer(...argv);
  } catch (err) {
    return errorReply(err);
  }
}

// -- steps ------------------------------------------------------------------------------------

async function runFile(path, transport, redis, totals) {
  const doc = JSON.parse(readFileSync(path, 'utf8'));
  if (doc === null || typeof doc !== 'object' || !Array.isArray(doc.steps)) throw new Mismatch('no "steps" array');
  for (const k of Object.keys(doc)) {
    if (!FILE_KEYS.has(k)) process.stderr.write(`${basename(path)}: unknown top-level key ${JSON.stringify(k)} ignored\n`);
  }
  const run = new Run();
  let steps = 0;
  await redis.callBuffer('FLUSHDB');
  for (const [i, step] of doc.steps.entries()) {
    const where = `step ${i + 1}`;
    try {
      await runStep(step, run, transport, redis, totals, where);
    } catch (err) {
      if (err instanceof Mismatch) {
        err.message = `${err.message.startsWith(where) ? '' : `${where}: `}${err.message}${step && step.note ? ` (note: ${step.note})` : ''}`;
        err.steps = steps;
      }
      throw err;
    }
    steps++;
    totals.steps++;
  }
  return { name: doc.name ?? basename(path), steps };
}

async function runStep(step, run, transport, redis, totals, where) {
  if (step === null || typeof step !== 'object' || Array.isArray(step)) throw new Mismatch(`${where}: not an object`);
  const kinds = Object.keys(STEP_KEYS).filter((k) => k in step);
  if (kinds.length !== 1) throw new Mismatch(`${where}: needs exactly one of call/redis/hash/log/key, has ${kinds.join('/') || 'none'}`);
  const kind = kinds[0];
  for (const k of Object.keys(step)) {
    if (!STEP_KEYS[kind].has(k)) throw new Mismatch(`${where}: unknown key ${JSON.stringify(k)} in a ${kind} step`);
  }
  const strings = (list, name) => {
    if (!Array.isArray(list)) throw new Mismatch(`${where}: "${name}" must be an array`);
    return list.map((v, j) => run.subst(v, `${where} ${name}[${j}]`));
  };

  if (kind === 'call') {
    const op = step.call;
    const expects = ['reply', 'error', 'conflict'].filter((k) => k in step);
    if (expects.length !== 1) throw new Mismatch(`${where}: a call needs exactly one of reply/error/conflict`);
    if (expects[0] === 'conflict' && op !== 'claim') throw new Mismatch(`${where}: "conflict" is for claim only`);
    const keys = strings(step.keys ?? [], 'keys');
    const args = strings(step.args ?? [], 'args');
    const reply = await transport.call(op, keys, args);
    totals.calls++;
    if (Array.isArray(reply) && isStr(reply[0])) totals.words.add(reply[0].toString('utf8'));
    if (reply instanceof Error) totals.words.add(reply.message.startsWith(BAD_ARGS) ? 'bad-args' : 'error');
    const w = `${where} (${op})`;
    if ('error' in step) {
      if (!(reply instanceof Error)) throw new Mismatch(`${w}: expected an error ${step.error}, got ${show(reply)}`);
      const prefix = `ERR pylivermore ${step.error}`;
      if (!reply.message.startsWith(prefix)) throw new Mismatch(`${w}: expected an error starting ${JSON.stringify(prefix)}, got ${JSON.stringify(reply.message)}`);
      return;
    }
    if (reply instanceof Error) throw new Mismatch(`${w}: unexpected error ${JSON.stringify(reply.message)}`);
    if ('reply' in step) {
      if (!Array.isArray(step.reply)) throw new Mismatch(`${w}: "reply" must be an array of matchers`);
      run.match(step.reply, reply, w);
      return;
    }
    const c = step.conflict;
    if (c === null || typeof c !== 'object' || !('pttl' in c) || !('fields' in c)) throw new Mismatch(`${w}: "conflict" needs pttl and fields`);
    if (!Array.isArray(reply) || reply.length < 2 || !isStr(reply[0]) || reply[0].toString() !== 'CONFLICT') {
      throw new Mismatch(`${w}: expected a CONFLICT reply, got ${show(reply)}`);
    }
    run.match(c.pttl, reply[1], `${w} pttl`);
    const got = pairs(reply.slice(2), `${w} conflict fields`);
    const want = fieldsObject(c.fields, w);
    const named = new Set(want.map(([f]) => f));
    const extra = [...got.keys()].filter((f) => !named.has(f));
    if (extra.length) throw new Mismatch(`${w}: CONFLICT carries fields the vector does not name: ${extra.join(', ')}`);
    for (const [f, m] of want) {
      if (m !== null && !got.has(f)) throw new Mismatch(`${w}: CONFLICT lacks the field ${f}`);
      run.match(m, got.get(f), `${w} field ${f}`);
    }
    return;
  }

  if (kind === 'redis') {
    const argv = strings(step.redis, 'redis');
    if (argv.length === 0) throw new Mismatch(`${where}: empty command`);
    const reply = await raw(redis, argv);
    if ('reply' in step) run.match(step.reply, reply, `${where} (${argv[0]})`);
    else if (reply instanceof Error) throw new Mismatch(`${where} (${argv[0]}): unexpected error ${JSON.stringify(reply.message)}`);
    return;
  }

  if (kind === 'hash') {
    const key = run.subst(step.hash, `${where} hash`);
    const reply = await raw(redis, ['HGETALL', key]);
    if (reply instanceof Error) throw new Mismatch(`${where}: HGETALL ${key}: ${reply.message}`);
    const got = pairs(reply, `${where} HGETALL ${key}`);
    const want = fieldsObject(step.fields ?? {}, where);
    for (const [f, m] of want) run.match(m, got.get(f) ?? null, `${where} ${key} field ${f}`);
    if (step.exact) {
      const named = new Set(want.map(([f]) => f));
      const extra = [...got.keys()].filter((f) => !named.has(f));
      if (extra.length) throw new Mismatch(`${where}: ${key} has fields the vector does not name: ${extra.join(', ')}`);
    }
    return;
  }

  if (kind === 'log') {
    const key = run.subst(step.log, `${where} log`);
    if (!Array.isArray(step.entries)) throw new Mismatch(`${where}: "entries" must be an array`);
    const reply = await raw(redis, ['XRANGE', key, '-', '+']);
    if (reply instanceof Error) throw new Mismatch(`${where}: XRANGE ${key}: ${reply.message}`);
    if (reply.length !== step.entries.length) {
      const events = reply.map(([, flat]) => pairs(flat, where).get('event')).map(show);
      throw new Mismatch(`${where}: ${key} has ${reply.length} entries (${events.join(', ')}), expected ${step.entries.length}`);
    }
    step.entries.forEach((entry, j) => {
      const got = pairs(reply[j][1], `${where} entry ${j + 1}`);
      for (const [f, m] of fieldsObject(entry, `${where} entry ${j + 1}`)) {
        run.match(m, got.get(f) ?? null, `${where} ${key} entry ${j + 1} (${reply[j][0]}) field ${f}`);
      }
    });
    return;
  }

  // key
  const key = run.subst(step.key, `${where} key`);
  if (typeof step.type !== 'string') throw new Mismatch(`${where}: "type" must be a string`);
  const type = await raw(redis, ['TYPE', key]);
  run.match(step.type, type, `${where} TYPE ${key}`);
  if ('pttl' in step) run.match(step.pttl, await raw(redis, ['PTTL', key]), `${where} PTTL ${key}`);
}

// -- main -------------------------------------------------------------------------------------

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const redis = new Redis(opts.url, {
    stringNumbers: true, // integers as exact decimal text (tokens, PTTLs), never a rounded double
    disableClientInfo: true, // no CLIENT SETINFO (not in the least-privilege rules)
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    commandTimeout: 15000,
    lazyConnect: true,
  });
  redis.on('error', () => {}); // reported through the failing command
  const totals = { files: 0, steps: 0, calls: 0, failed: 0, words: new Set() };
  let transport;
  try {
    await redis.connect();
    transport = new Transport(redis, opts.transport);
    await transport.load();
  } catch (err) {
    process.stderr.write(`conformance.mjs: cannot start (${opts.transport}): ${err.message}\n`);
    redis.disconnect();
    process.exit(2);
  }
  for (const path of opts.files) {
    totals.files++;
    try {
      const { name, steps } = await runFile(path, transport, redis, totals);
      console.log(`PASS ${opts.transport} ${basename(path)} (${name}): ${steps} steps`);
    } catch (err) {
      totals.failed++;
      const why = err instanceof Mismatch ? err.message : `${err.name}: ${err.message}`;
      console.log(`FAIL ${opts.transport} ${basename(path)}: ${why}`);
      if (!(err instanceof Mismatch) && err.name !== 'SyntaxError' && redis.status !== 'ready') break; // connection lost
    }
  }
  const summary = {
    transport: opts.transport,
    files: totals.files,
    steps: totals.steps,
    calls: totals.calls,
    failed: totals.failed,
    reloads: transport.reloads,
    words: [...totals.words].sort(),
  };
  console.log(JSON.stringify(summary));
  redis.disconnect();
  process.exitCode = totals.failed || totals.files === 0 ? 1 : 0;
}

await main();
