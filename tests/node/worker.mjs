#!/usr/bin/env node
// A contention worker in Node.js speaking script contract v2 (lua/README.md) with ioredis, written
// from the contract page alone. It loops until --seconds have passed: claim a random resource with a
// fresh 128-bit token; on CLAIMED keep the lease alive with heartbeats, walk idle -> starting ->
// warming -> active, hold 20-200 ms, walk active -> stopping -> stopped and deregister; on CONFLICT
// back off briefly.
//
//   node tests/node/worker.mjs --url redis://127.0.0.1:6380/0 --namespace ns --resources 1,2 \
//     --seconds 8 --history FILE --name node-1 [--ttl 2000] [--heartbeat 400] [--deadline 1200] [--long-hold P]
//
// --long-hold P: with probability P a lease is held longer than the TTL (uniform ttl..1.5 x ttl), so
// that only its heartbeats keep it. SIGTERM / SIGINT: finish the current lease (walk down, release),
// then exit.
//
// The least-privilege worker ACL (pylivermore.acl.WORKER_COMMANDS) is enough: EVALSHA, SCRIPT LOAD
// and the ready check's INFO; CLIENT SETINFO is not sent.
//
// History: one JSON object per line appended to FILE, in the format of tests/chaos/runner.py's
// Recorder, which tests/chaos/checker.py reads: {"type": "invoke"|"ok"|"fail"|"unknown"|"event",
// "f", "op", "proc", "pid", "t", "resource", "lease", "token", "value"}. "t" is
// process.hrtime.bigint(): libuv's uv_hrtime(), clock_gettime(CLOCK_MONOTONIC) on Linux, the clock
// of Python's time.monotonic_ns(), so the records of Node and Python processes compare. Times and
// fencing tokens are written as exact JSON integers (BigInt, never a rounded double).
//
// Lease validity (lua/README.md, "Semantics"): counted from the send time of the last acknowledged
// claim or heartbeat, on the monotonic clock; the worker stops acting as the owner at
// send + renew deadline (an acknowledgement that arrives after the deadline does not revive it), and
// at once when a heartbeat or an owner operation answers EXPIRED or TAKEN. The send time recorded is
// the invoke record's time, taken before the command is written: the deadline the history shows is
// never later than the one the worker used.

import { createHash, randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync, readdirSync, writeSync } from 'node:fs';
import { hostname as osHostname } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import Redis from 'ioredis';

const HERE = dirname(fileURLToPath(import.meta.url));
const LUA = resolve(HERE, '..', '..', 'lua');
const MS = 1_000_000n;
const RETENTION_MS = '7776000000'; // 90 days, pylivermore's default (at least one day)
const WALK_UP = ['starting', 'warming', 'active'];
const WALK_DOWN = ['stopping', 'stopped'];

const now = () => process.hrtime.bigint();
const sleep = (ms) => new Promise((r) => setTimeout(r, Math.max(0, ms)));
const uniform = (lo, hi) => lo + Math.random() * (hi - lo);

// -- arguments --------------------------------------------------------------------------------

function parseArgs(argv) {
  const o = { ttl: 2000, heartbeat: 400, deadline: 1200, longHold: 0, namespace: 'exchange', seconds: 8, name: `node-${process.pid}` };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split(/=(.*)/s, 2);
    const value = inline ?? argv[++i];
    switch (flag) {
      case '--url': o.url = value; break;
      case '--namespace': o.namespace = value; break;
      case '--resources': o.resources = value.split(',').map((s) => s.trim()).filter(Boolean); break;
      case '--seconds': o.seconds = Number(value); break;
      case '--history': o.history = value; break;
      case '--name': o.name = value; break;
      case '--ttl': o.ttl = Number(value); break;
      case '--heartbeat': o.heartbeat = Number(value); break;
      case '--deadline': o.deadline = Number(value); break;
      case '--long-hold': o.longHold = Number(value); break;
      default: die(`unknown option ${flag}`);
    }
  }
  if (!o.url || !o.history || !o.resources?.length) die('--url, --history and --resources are required');
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(o.namespace)) die('bad --namespace');
  for (const id of o.resources) {
    // canonical ids (lua/README.md, "Key layout")
    const integer = /^[1-9][0-9]{0,63}$/.test(id);
    const slug = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(id) && !/^[0-9]+$/.test(id);
    if (!integer && !slug) die(`resource id ${JSON.stringify(id)} is not canonical`);
  }
  if (![o.ttl, o.heartbeat, o.deadline, o.seconds].every(Number.isFinite)) die('timings must be numbers');
  if (!(o.ttl > o.deadline && o.deadline > 1.2 * o.heartbeat)) die('need ttl > deadline > 1.2 x heartbeat');
  if (!Number.isInteger(o.ttl) || o.ttl < 10 || o.ttl > 86400000) die('--ttl must be an integer 10..86400000 (ms)');
  return o;
}

function die(message) {
  process.stderr.write(`worker.mjs: ${message}\n`);
  process.exit(2);
}

// -- history ----------------------------------------------------------------------------------

class Recorder {
  constructor(path, proc) {
    this.fd = openSync(path, 'a');
    this.proc = proc;
    this.ops = 0;
  }

  write(type, f, op, t, where, value) {
    const rec = { type, f, op, proc: this.proc, pid: process.pid, t, ...where, value };
    // BigInt (times, fencing tokens) as exact JSON integers.
    const line = JSON.stringify(rec, (_, v) => (typeof v === 'bigint' ? `\u0000${v}\u0000` : v)).replace(
      /"\\u0000(-?\d+)\\u0000"/g,
      '$1',
    );
    writeSync(this.fd, `${line}\n`); // one write per line, synchronous: a killed worker loses no completed line
  }

  invoke(f, where, value = {}) {
    const op = ++this.ops;
    const t = now();
    this.write('invoke', f, op, t, where, value);
    return { op, t };
  }

  done(op, type, f, where, value = {}, t = now()) {
    this.write(type, f, op, t, where, value);
    return t;
  }

  event(f, where = {}, value = {}, t = now(), op = null) {
    this.write('event', f, op, t, { resource: null, lease: null, token: null, ...where }, value);
  }

  close() {
    closeSync(this.fd);
  }
}

// -- scripts ----------------------------------------------------------------------------------

class Scripts {
  constructor(redis) {
    this.redis = redis;
    this.byOp = new Map();
    for (const f of readdirSync(LUA)) {
      const m = /^([a-z_]+)-(\d+|n)\.lua$/.exec(f);
      if (!m) continue;
      const source = readFileSync(join(LUA, f));
      this.byOp.set(m[1], { source, sha: createHash('sha1').update(source).digest('hex') });
    }
  }

  async load(attempts = 5) {
    for (let i = 1; ; i++) {
      try {
        for (const s of this.byOp.values()) await this.redis.callBuffer('SCRIPT', 'LOAD', s.source);
        return;
      } catch (err) {
        if (isReplyError(err) || i >= attempts) throw err; // a slow start (a loaded machine) is retried
        await sleep(200 * i);
      }
    }
  }

  /** EVALSHA op; on NOSCRIPT (the script did not run) load it and retry once. Replies as strings. */
  async call(op, keys, args, client = this.redis) {
    const s = this.byOp.get(op);
    const send = () => client.call('EVALSHA', s.sha, keys.length, ...keys, ...args);
    try {
      return await send();
    } catch (err) {
      if (!String(err?.message).startsWith('NOSCRIPT')) throw err;
      await client.callBuffer('SCRIPT', 'LOAD', s.source);
      return send();
    }
  }
}

const word = (reply) => (Array.isArray(reply) && typeof reply[0] === 'string' ? reply[0] : null);
const isReplyError = (err) => err?.name === 'ReplyError';

// -- the worker -------------------------------------------------------------------------------

class Worker {
  constructor(o) {
    this.o = o;
    this.rec = new Recorder(o.history, o.name);
    this.instance = `${o.name}@${process.pid}`;
    this.host = osHostname() || 'node-host';
    const options = {
      disableClientInfo: true,
      stringNumbers: true,
      maxRetriesPerRequest: 1,
      commandTimeout: Math.max(200, o.deadline), // a reply later than the renew deadline proves nothing
      connectTimeout: 2000,
    };
    this.redis = new Redis(o.url, options);
    this.beats = new Redis(o.url, options); // heartbeats on their own connection: never behind a slow call
    for (const c of [this.redis, this.beats]) c.on('error', () => {});
    this.scripts = new Scripts(this.redis);
    this.rdNs = BigInt(Math.round(o.deadline)) * MS;
    this.stopAt = now() + BigInt(Math.round(o.seconds * 1000)) * MS;
    this.stats = { claims: 0, conflicts: 0, released: 0, lost: 0, protocol_errors: 0 };
  }

  keys(id) {
    const p = `${this.o.namespace}:{${id}}:`;
    return { status: `${p}status`, log: `${p}log`, fence: `${p}fence` };
  }

  alive() {
    return now() < this.stopAt;
  }

  protocolError(what) {
    this.stats.protocol_errors++;
    process.stderr.write(`worker.mjs ${this.o.name}: ${what}\n`);
  }

  async run() {
    await this.scripts.load();
    this.rec.event('start', {}, { instance: this.instance, impl: 'node', deadline: this.stopAt });
    while (this.alive()) {
      const id = this.o.resources[Math.floor(Math.random() * this.o.resources.length)];
      const lease = await this.claim(id);
      if (!lease) {
        await sleep(uniform(30, 150)); // CONFLICT: back off briefly
        continue;
      }
      await this.hold(lease);
      await sleep(uniform(0, 200));
    }
    this.rec.event('exit');
  }

  async claim(id) {
    const k = this.keys(id);
    const token = randomBytes(16).toString('hex'); // 128 bits from the OS CSPRNG, 32 chars; never logged
    const { op, t: sent } = this.rec.invoke('claim', { resource: id, lease: null, token: null });
    const leaseId = `${this.o.name}#${op}`;
    const where = { resource: id, lease: leaseId, token: null };
    const args = [token, String(this.o.ttl), id, `Exchange${id}`, this.host, this.instance, '0', RETENTION_MS, ''];
    let reply;
    const send = () => this.scripts.call('claim', [k.status, k.log, k.fence], args);
    try {
      // A claim whose reply was not seen is retried once with the same token and arguments: CLAIMED
      // "retry" if the first one was applied (its TTL, and so the deadline, count from the first send).
      reply = await send().catch((err) => {
        if (isReplyError(err)) throw err;
        return send();
      });
    } catch (err) {
      this.rec.done(op, isReplyError(err) ? 'fail' : 'unknown', 'claim', where, { error: String(err.message) });
      if (isReplyError(err)) this.protocolError(`claim: ${err.message}`);
      return null;
    }
    const w = word(reply);
    if (w === 'CLAIMED') {
      const fencing = BigInt(reply[1]);
      this.rec.done(op, 'ok', 'claim', { ...where, token: fencing }, { instance: this.instance, how: reply[2] });
      this.stats.claims++;
      const lease = { id, k, token, fencing, leaseId, deadline: sent + this.rdNs, lost: null, seq: 0, beating: true };
      lease.where = { resource: id, lease: leaseId, token: fencing };
      this.startHeartbeat(lease, sent);
      return lease;
    }
    if (w === 'CONFLICT') {
      const fields = new Map();
      for (let i = 2; i + 1 < reply.length; i += 2) fields.set(reply[i], reply[i + 1]);
      this.rec.done(op, 'fail', 'claim', where, { error: 'conflict', holder: fields.get('instanceId') ?? null, pttl: Number(reply[1]) });
      this.stats.conflicts++;
      return null;
    }
    this.rec.done(op, 'fail', 'claim', where, { error: `reply:${w}`, reply });
    this.protocolError(`claim answered ${JSON.stringify(reply)}`);
    return null;
  }

  // -- lease validity ---------------------------------------------------------------------------

  valid(lease, t = now()) {
    return lease.lost === null && t < lease.deadline;
  }

  stopBeating(lease) {
    lease.beating = false;
    lease.wake?.();
  }

  lose(lease, reason) {
    if (lease.lost !== null) return;
    lease.lost = reason;
    this.stopBeating(lease);
    this.stats.lost++;
    this.rec.event('lost', lease.where, { reason });
  }

  /** ensure_held: records "held" with the time read *before* the check, as the chaos runner does. */
  ensureHeld(lease) {
    const t = now();
    if (this.valid(lease, t)) {
      this.rec.event('held', lease.where, {}, t);
      return true;
    }
    if (lease.lost === null) this.lose(lease, 'deadline');
    this.rec.event('held_check_failed', lease.where, { reason: lease.lost });
    return false;
  }

  startHeartbeat(lease, claimSent) {
    const hbNs = BigInt(Math.round(this.o.heartbeat)) * MS;
    const loop = async () => {
      let next = claimSent + hbNs;
      while (lease.beating) {
        const wait = Number(next - now()) / 1e6;
        if (wait > 0) {
          await new Promise((wake) => {
            const timer = setTimeout(wake, wait);
            lease.wake = () => {
              clearTimeout(timer);
              wake();
            };
          });
        }
        if (!lease.beating) return;
        if (!this.valid(lease)) {
          this.lose(lease, lease.lost ?? 'deadline');
          return;
        }
        const { op, t: sent } = this.rec.invoke('heartbeat', lease.where);
        next = sent + hbNs;
        let reply;
        try {
          reply = await this.scripts.call('heartbeat', [lease.k.status], [lease.token, String(this.o.ttl)], this.beats);
        } catch (err) {
          this.rec.done(op, isReplyError(err) ? 'fail' : 'unknown', 'heartbeat', lease.where, { error: String(err.message) });
          if (isReplyError(err)) this.protocolError(`heartbeat: ${err.message}`);
          continue; // retried at the next interval, until the deadline
        }
        const w = word(reply);
        const t = now();
        if (w === 'RENEWED') {
          this.rec.done(op, 'ok', 'heartbeat', lease.where, { reply: w }, t);
          // Counted from this beat's send time, unless the deadline already passed before the ack.
          if (lease.lost === null && t < lease.deadline && sent + this.rdNs > lease.deadline) lease.deadline = sent + this.rdNs;
        } else if (w === 'EXPIRED' || w === 'TAKEN') {
          this.rec.done(op, 'fail', 'heartbeat', lease.where, { reply: w, error: `lost:${w.toLowerCase()}` }, t);
          this.lose(lease, w.toLowerCase());
          return;
        } else {
          this.rec.done(op, 'fail', 'heartbeat', lease.where, { reply: w, error: `reply:${w}` }, t);
          this.protocolError(`heartbeat answered ${JSON.stringify(reply)}`);
          this.lose(lease, 'corrupt');
          return;
        }
      }
    };
    lease.heartbeat = loop();
  }

  // -- owner operations -------------------------------------------------------------------------

  /** One owner operation with a new seq; a call whose reply was not seen is retried once with the same
   * seq. Each send is recorded as a "send" event of operation `op` carrying its seq (the chaos checker
   * identifies a transition's log entry by lease and seq). */
  async ownerCall(lease, op, script, keys, argsFor) {
    const seq = ++lease.seq;
    const send = () => {
      this.rec.event('send', lease.where, { script, seq }, now(), op);
      return this.scripts.call(script, keys, argsFor(String(seq)));
    };
    try {
      return await send();
    } catch (err) {
      if (isReplyError(err)) throw err;
      return send();
    }
  }

  async transition(lease, to) {
    if (!this.ensureHeld(lease)) return false;
    const { op } = this.rec.invoke('transition', lease.where, { to });
    let reply;
    try {
      reply = await this.ownerCall(lease, op, 'transition', [lease.k.status, lease.k.log], (seq) => [lease.token, seq, to, '']);
    } catch (err) {
      this.rec.done(op, isReplyError(err) ? 'fail' : 'unknown', 'transition', lease.where, { error: String(err.message) });
      if (isReplyError(err)) this.protocolError(`transition: ${err.message}`);
      return false;
    }
    const w = word(reply);
    if (w === 'OK' || (w === 'REPLAYED' && reply[2] === to)) {
      this.rec.done(op, 'ok', 'transition', lease.where, { state: reply[w === 'OK' ? 1 : 2], reply: w });
      return true;
    }
    if (w === 'EXPIRED' || w === 'TAKEN') {
      this.rec.done(op, 'fail', 'transition', lease.where, { reply: w, error: `lost:${w.toLowerCase()}` });
      this.lose(lease, w.toLowerCase());
      return false;
    }
    this.rec.done(op, 'fail', 'transition', lease.where, { reply: w, error: w === 'BAD_TRANSITION' ? 'bad_transition' : `reply:${w}` });
    this.protocolError(`transition to ${to} answered ${JSON.stringify(reply)}`);
    return false;
  }

  async hold(lease) {
    let ok = true;
    for (const to of WALK_UP) {
      if (!(ok = await this.transition(lease, to))) break;
    }
    if (ok && this.ensureHeld(lease)) {
      await sleep(Math.random() < this.o.longHold ? uniform(this.o.ttl, 1.5 * this.o.ttl) : uniform(20, 200));
      for (const to of WALK_DOWN) {
        if (!(await this.transition(lease, to))) break;
      }
    }
    await this.release(lease);
  }

  async release(lease) {
    this.stopBeating(lease); // stop renewing first; a beat in flight may still be answered
    const { op } = this.rec.invoke('release', lease.where);
    if (lease.lost === 'expired' || lease.lost === 'taken') {
      // The server said the lease is gone: releasing it would only answer EXPIRED/TAKEN.
      this.rec.done(op, 'ok', 'release', lease.where, { released: false, reply: 'skipped', lost: lease.lost });
      return;
    }
    const args = [lease.token, lease.fencing.toString()];
    let reply;
    try {
      const send = () => {
        this.rec.event('send', lease.where, { script: 'deregister', fencing: lease.fencing }, now(), op);
        return this.scripts.call('deregister', [lease.k.status, lease.k.log], args);
      };
      reply = await send().catch((err) => {
        if (isReplyError(err)) throw err;
        return send(); // REPLAYED if the first was applied
      });
    } catch (err) {
      this.rec.done(op, isReplyError(err) ? 'fail' : 'unknown', 'release', lease.where, { error: String(err.message) });
      if (isReplyError(err)) this.protocolError(`deregister: ${err.message}`);
      return;
    }
    const w = word(reply);
    const released = w === 'RELEASED' || w === 'REPLAYED';
    this.rec.done(op, 'ok', 'release', lease.where, { released, reply: w, state: reply[1] ?? null });
    if (released) this.stats.released++;
    else if (w === 'EXPIRED' || w === 'TAKEN') this.lose(lease, w.toLowerCase());
    else this.protocolError(`deregister answered ${JSON.stringify(reply)}`);
    await lease.heartbeat;
  }

  close() {
    this.redis.disconnect();
    this.beats.disconnect();
    this.rec.close();
  }
}

const worker = new Worker(parseArgs(process.argv.slice(2)));
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    worker.stopAt = now(); // finish the current lease, then exit
  });
}
try {
  await worker.run();
} catch (err) {
  worker.rec.event('crash', {}, { error: String(err?.stack ?? err) });
  process.stderr.write(`worker.mjs ${worker.o.name}: ${err?.stack ?? err}\n`);
  process.exitCode = 3;
} finally {
  worker.close();
}
console.log(JSON.stringify({ name: worker.o.name, ...worker.stats }));
if (!process.exitCode && worker.stats.protocol_errors) process.exitCode = 1;
