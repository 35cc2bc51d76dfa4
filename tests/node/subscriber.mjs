#!/usr/bin/env node
// A non-Python subscriber that checks every message against the wire protocol, schema 1
// (docs/protocol.md; autotimm_stream/schemas/protocol-v1.json is its normative JSON Schema), plus
// what a schema cannot say: topic and header agree, frame indices increase, boxes lie inside the
// frame, class fractions are the mask's own histogram, eos counts the results that came.
//
//   node subscriber.mjs --endpoint tcp://127.0.0.1:5555 --sources demo [--timeout 120] [PREFIX...]
//
// Connects a zeromq@6 Subscriber, subscribes to the topic PREFIXes (default: everything; `eos/` is
// always added, since the ends of streams are what it waits for), prints `READY <endpoint>` on stderr
// once connected and subscribed, then receives until it has seen `eos/<id>` for every id in
// --sources (without --sources: until every source it has heard of has ended) or until --timeout
// seconds have passed. It prints one JSON summary line on stdout and exits 0 only if every message
// passed: 1 on a protocol error or a timeout, 2 on bad arguments.
//
// Why the ns fields are read from the raw text: `capture_ns`, `publish_ns` and `at_ns` are ns since
// the epoch (~1.8e18), far above Number.MAX_SAFE_INTEGER (2^53 ~ 9.0e15). JSON.parse turns them into
// doubles, which keeps only ~16 significant digits (steps of 256 ns at that size) and, worse, makes
// every such value look like an integer: `1.8e18 + 0.5` and a float sent by mistake both parse to an
// integral double. So the literal tokens are taken from the header text and checked as BigInt: an
// integer literal, after 2020-09 (1.6e18), not in the future, publish >= capture, and `latency_ms`
// equal to (publish_ns - capture_ns) / 1e6 up to its 3-decimal rounding.

import { inflateSync } from "node:zlib"
import { Subscriber } from "zeromq"

const SCHEMA = 1
const TASKS = ["classification", "multilabel", "detection", "segmentation"]
const OTHER_KINDS = ["status", "heartbeat", "eos"]
const STATES = ["connecting", "running", "reconnecting", "stopped", "failed"]
const EOS_REASONS = ["end", "stopped", "removed", "error"]
const FLAGS = ["corrupt", "after_gap", "no_pts"]
const STAGES = ["decode", "queue", "preprocess", "wait", "infer", "post", "publish"]
const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])
const MIN_EPOCH_NS = 1_600_000_000_000_000_000n // 2020-09-13: anything earlier is not a wall clock
const FUTURE_SLACK_NS = 60_000_000_000n // clocks of one machine; a minute is generous
const MAX_ERRORS = 50 // keep the summary line small; the total is still counted
const ENDPOINT_RE = /^tcp:\/\/127\.0\.0\.1:([0-9]{1,5})$/

function usage(message) {
  process.stderr.write(
    `subscriber.mjs: error: ${message}\n` +
      "usage: node subscriber.mjs --endpoint tcp://127.0.0.1:PORT [--sources ID[,ID...]] [--timeout S] [PREFIX...]\n",
  )
  process.exit(2)
}

function parseArgs(argv) {
  const args = { endpoint: null, sources: [], timeoutS: 60, prefixes: [] }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    const value = () => {
      if (i + 1 >= argv.length) usage(`${arg} needs a value`)
      return argv[++i]
    }
    if (arg === "--endpoint") args.endpoint = value()
    else if (arg === "--sources") args.sources = value().split(",").filter(Boolean)
    else if (arg === "--timeout") args.timeoutS = Number(value())
    else if (arg.startsWith("--")) usage(`unknown option ${arg}`)
    else args.prefixes.push(arg)
  }
  const m = ENDPOINT_RE.exec(args.endpoint ?? "")
  if (!m || Number(m[1]) < 1 || Number(m[1]) > 65535) {
    usage(`--endpoint: expected tcp://127.0.0.1:PORT (loopback only), got ${JSON.stringify(args.endpoint)}`)
  }
  if (!(args.timeoutS > 0 && Number.isFinite(args.timeoutS))) {
    usage(`--timeout: expected a number of seconds > 0, got ${JSON.stringify(args.timeoutS)}`)
  }
  if (args.prefixes.length === 0) args.prefixes = [""]
  if (!args.prefixes.some((p) => "eos/".startsWith(p))) args.prefixes.push("eos/")
  return args
}

// -- helpers; every check records what was expected and what came -------------------------------
const isObject = (v) => typeof v === "object" && v !== null && !Array.isArray(v)
const isNumber = (v) => typeof v === "number" && Number.isFinite(v)
const isInt = (v) => Number.isInteger(v)
const show = (v) => {
  const s = JSON.stringify(v)
  return s === undefined ? String(v) : s.length > 80 ? `${s.slice(0, 77)}...` : s
}

/** The literal token of a top-level integer field, as a BigInt (see the note at the top). */
function rawInteger(text, key) {
  const re = new RegExp(`"${key}"\\s*:\\s*(-?[0-9][0-9.eE+-]*)`, "g")
  const tokens = Array.from(text.matchAll(re), (m) => m[1])
  if (tokens.length !== 1) return { error: `expected one "${key}" number in the header text, found ${tokens.length}` }
  if (!/^-?[0-9]+$/.test(tokens[0])) return { error: `${key}: expected an integer literal, got ${tokens[0]}` }
  return { value: BigInt(tokens[0]) }
}

class Checker {
  constructor(prefixes, expected) {
    this.prefixes = prefixes
    this.expected = new Set(expected)
    // keyed by names off the wire: no prototype, so a source called "__proto__" is just a name
    this.counts = Object.create(null)
    this.sources = Object.create(null)
    this.messages = 0
    this.errors = []
    this.errorCount = 0
  }

  error(where, message) {
    this.errorCount++
    if (this.errors.length < MAX_ERRORS) this.errors.push(`${where}: ${message}`)
  }

  source(id) {
    this.sources[id] ??= {
      results: 0,
      tasks: [],
      first_index: null,
      last_index: null,
      states: [],
      heartbeats: 0,
      masks: {}, // segmentation: results per mask encoding
      eos: null,
    }
    return this.sources[id]
  }

  /** True once every expected source (or, without --sources, every source heard of) has ended. */
  done() {
    const ids = this.expected.size ? [...this.expected] : Object.keys(this.sources)
    return ids.length > 0 && ids.every((id) => this.sources[id]?.eos)
  }

  missing() {
    const ids = this.expected.size ? [...this.expected] : Object.keys(this.sources)
    return ids.filter((id) => !this.sources[id]?.eos)
  }

  check(parts) {
    this.messages++
    const n = this.messages
    if (parts.length < 2) return this.error(`message ${n}`, `expected [topic, header, payload...], got ${parts.length} part(s)`)
    let topic, text, header
    try {
      const utf8 = new TextDecoder("utf-8", { fatal: true })
      topic = utf8.decode(parts[0])
      text = utf8.decode(parts[1])
    } catch {
      return this.error(`message ${n}`, "expected UTF-8 topic and header")
    }
    const where = `message ${n} (${topic})`
    try {
      header = JSON.parse(text)
    } catch (exc) {
      return this.error(where, `header is not valid JSON (${exc.message}): ${show(text)}`)
    }
    if (!isObject(header)) return this.error(where, `expected a JSON object header, got ${show(header)}`)
    if (!this.prefixes.some((p) => topic.startsWith(p))) {
      this.error(where, `topic matches none of the subscriptions ${show(this.prefixes)}`)
    }
    const slash = topic.indexOf("/")
    const kind = slash > 0 ? topic.slice(0, slash) : ""
    const sourceId = slash > 0 ? topic.slice(slash + 1) : ""
    if (!kind || !sourceId) return this.error(where, "expected topic <kind>/<source_id>")
    this.counts[kind] = (this.counts[kind] ?? 0) + 1
    if (header.schema !== SCHEMA) this.error(where, `schema: expected ${SCHEMA}, got ${show(header.schema)}`)
    if (header.source_id !== sourceId) {
      this.error(where, `source_id: expected ${show(sourceId)} (from the topic), got ${show(header.source_id)}`)
    }
    const src = this.source(sourceId)
    if (kind === "status") return this.checkStatus(where, parts, text, header, src)
    if (kind === "heartbeat") return this.checkHeartbeat(where, parts, text, header, src, sourceId)
    if (kind === "eos") return this.checkEos(where, parts, header, src, sourceId)
    if (!TASKS.includes(kind)) return this.error(where, `topic kind: expected one of ${show([...TASKS, ...OTHER_KINDS])}`)
    return this.checkResult(where, parts, text, header, src, kind)
  }

  checkStatus(where, parts, text, h, src) {
    if (parts.length !== 2) this.error(where, `expected 2 parts, got ${parts.length}`)
    if (!STATES.includes(h.state)) this.error(where, `state: expected one of ${show(STATES)}, got ${show(h.state)}`)
    if (h.previous !== null && !STATES.includes(h.previous)) {
      this.error(where, `previous: expected null or one of ${show(STATES)}, got ${show(h.previous)}`)
    }
    const last = src.states.at(-1)
    if (last !== undefined && h.previous !== last) {
      this.error(where, `previous: expected ${show(last)} (the last state published), got ${show(h.previous)}`)
    }
    if (typeof h.reason !== "string") this.error(where, `reason: expected a string, got ${show(h.reason)}`)
    if (!(isInt(h.attempt) && h.attempt >= 0)) this.error(where, `attempt: expected an integer >= 0, got ${show(h.attempt)}`)
    if (!(h.retry_in_s === null || (isNumber(h.retry_in_s) && h.retry_in_s >= 0))) {
      this.error(where, `retry_in_s: expected null or a number >= 0, got ${show(h.retry_in_s)}`)
    }
    this.wallClock(where, text, "at_ns")
    if (src.eos) this.error(where, "status after the source's eos")
    src.states.push(h.state)
  }

  checkHeartbeat(where, parts, text, h, src, sourceId) {
    if (parts.length !== 2) this.error(where, `expected 2 parts, got ${parts.length}`)
    if (!(h.state === null || STATES.includes(h.state))) {
      this.error(where, `state: expected null or one of ${show(STATES)}, got ${show(h.state)}`)
    }
    for (const key of ["frames_decoded", "frames_out", "drops", "queue_depth"]) {
      if (!(isInt(h[key]) && h[key] >= 0)) this.error(where, `${key}: expected an integer >= 0, got ${show(h[key])}`)
    }
    for (const key of ["fps", "uptime_s"]) {
      if (!(isNumber(h[key]) && h[key] >= 0)) this.error(where, `${key}: expected a number >= 0, got ${show(h[key])}`)
    }
    const last = h.last_frame_index
    if (!(last === null || last === undefined || (isInt(last) && last >= 0))) {
      this.error(where, `last_frame_index: expected null or an integer >= 0, got ${show(last)}`)
    } else if (isInt(last) && src.last_index !== null && this.covers(sourceId) && last !== src.last_index) {
      // the same sink thread sends results and heartbeats, and zmq keeps their order
      this.error(where, `last_frame_index: expected ${src.last_index} (the last result received), got ${last}`)
    }
    this.wallClock(where, text, "at_ns")
    src.heartbeats++
  }

  /** Whether every result of ``sourceId`` reaches this subscriber (one of its topics is subscribed). */
  covers(sourceId) {
    return TASKS.some((t) => this.prefixes.some((p) => `${t}/${sourceId}`.startsWith(p)))
  }

  checkEos(where, parts, h, src, sourceId) {
    if (parts.length !== 2) this.error(where, `expected 2 parts, got ${parts.length}`)
    if (!(isInt(h.frames) && h.frames >= 0)) this.error(where, `frames: expected an integer >= 0, got ${show(h.frames)}`)
    if (!EOS_REASONS.includes(h.reason)) this.error(where, `reason: expected one of ${show(EOS_REASONS)}, got ${show(h.reason)}`)
    if (src.eos) this.error(where, "a second eos for this source")
    if (this.covers(sourceId) && h.frames !== src.results) {
      this.error(where, `frames: expected ${src.results} (the results received for ${sourceId}), got ${show(h.frames)}`)
    }
    src.eos = { frames: h.frames, reason: h.reason }
  }

  wallClock(where, text, key) {
    const got = rawInteger(text, key)
    if (got.error) {
      this.error(where, got.error)
      return null
    }
    const now = BigInt(Date.now()) * 1_000_000n
    if (got.value < MIN_EPOCH_NS || got.value > now + FUTURE_SLACK_NS) {
      this.error(where, `${key}: expected ns since the epoch between 2020-09 and now, got ${got.value}`)
    }
    return got.value
  }

  checkResult(where, parts, text, h, src, kind) {
    if (h.task !== kind) this.error(where, `task: expected ${show(kind)} (from the topic), got ${show(h.task)}`)
    if (src.eos) this.error(where, "result after the source's eos")
    const i = h.frame_index
    if (!(isInt(i) && i >= 0)) this.error(where, `frame_index: expected an integer >= 0, got ${show(i)}`)
    else if (src.last_index !== null && i <= src.last_index) {
      this.error(where, `frame_index: expected > ${src.last_index} (the source's previous), got ${i}`)
    }
    if (!(h.pts === null || (isNumber(h.pts) && h.pts >= 0))) this.error(where, `pts: expected null or a number >= 0, got ${show(h.pts)}`)
    const capture = this.wallClock(where, text, "capture_ns")
    const publish = this.wallClock(where, text, "publish_ns")
    if (!(isNumber(h.latency_ms) && h.latency_ms >= 0)) this.error(where, `latency_ms: expected a number >= 0, got ${show(h.latency_ms)}`)
    else if (capture !== null && publish !== null) {
      if (publish < capture) this.error(where, `publish_ns ${publish} is before capture_ns ${capture}`)
      const latency = Number(publish - capture) / 1e6
      if (Math.abs(latency - h.latency_ms) > 0.0006) {
        this.error(where, `latency_ms: expected (publish_ns - capture_ns) / 1e6 = ${latency}, got ${h.latency_ms}`)
      }
    }
    const { width: w, height: ht } = h
    const sized = isInt(w) && w > 0 && isInt(ht) && ht > 0
    if (!sized) this.error(where, `width, height: expected integers > 0, got ${show(w)}, ${show(ht)}`)
    if (!(Array.isArray(h.flags) && h.flags.every((f) => FLAGS.includes(f)) && new Set(h.flags).size === h.flags.length)) {
      this.error(where, `flags: expected distinct flags from ${show(FLAGS)}, got ${show(h.flags)}`)
    }
    if (!(typeof h.model === "string" && h.model)) this.error(where, `model: expected a name, got ${show(h.model)}`)
    if (typeof h.model_version !== "string") this.error(where, `model_version: expected a string, got ${show(h.model_version)}`)
    if (!(isInt(h.batch_size) && h.batch_size >= 1)) this.error(where, `batch_size: expected an integer >= 1, got ${show(h.batch_size)}`)
    this.checkTimings(where, h.timings_ms)
    if (kind === "detection") this.checkDetections(where, h.detections, sized ? w : NaN, sized ? ht : NaN)
    else if (kind === "segmentation") {
      this.checkSegmentation(where, parts, h, sized ? w : NaN, sized ? ht : NaN)
      const encoding = String(h.mask?.encoding)
      src.masks[encoding] = (src.masks[encoding] ?? 0) + 1
    }
    else this.checkClasses(where, h.classes)
    if (kind !== "segmentation" && parts.length !== 2) this.error(where, `expected 2 parts for ${kind}, got ${parts.length}`)
    src.results++
    if (!src.tasks.includes(kind)) src.tasks.push(kind)
    if (isInt(i)) {
      src.first_index ??= i
      src.last_index = i
    }
  }

  checkTimings(where, t) {
    if (!isObject(t)) return this.error(where, `timings_ms: expected an object, got ${show(t)}`)
    for (const stage of STAGES) if (!(stage in t)) this.error(where, `timings_ms: stage ${show(stage)} is missing`)
    for (const [stage, ms] of Object.entries(t)) {
      if (!(isNumber(ms) && ms >= 0)) this.error(where, `timings_ms.${stage}: expected a number >= 0, got ${show(ms)}`)
    }
  }

  /** Best first: scores never rise along the list. */
  checkScored(where, field, list, key) {
    list.forEach((item, k) => {
      if (k > 0 && isNumber(item[key]) && isNumber(list[k - 1][key]) && item[key] > list[k - 1][key]) {
        this.error(where, `${field}[${k}].${key}: expected best first, got ${list[k - 1][key]} then ${item[key]}`)
      }
    })
  }

  checkLabelled(where, field, item) {
    if (!isObject(item)) {
      this.error(where, `${field}: expected an object, got ${show(item)}`)
      return false
    }
    if (!(isInt(item.class_id) && item.class_id >= 0)) this.error(where, `${field}.class_id: expected an integer >= 0, got ${show(item.class_id)}`)
    if (typeof item.label !== "string") this.error(where, `${field}.label: expected a string, got ${show(item.label)}`)
    return true
  }

  checkDetections(where, dets, w, h) {
    if (!Array.isArray(dets)) return this.error(where, `detections: expected a list, got ${show(dets)}`)
    dets.forEach((d, k) => {
      const field = `detections[${k}]`
      if (!this.checkLabelled(where, field, d)) return
      if (!(isNumber(d.score) && d.score >= 0 && d.score <= 1)) this.error(where, `${field}.score: expected a number in [0, 1], got ${show(d.score)}`)
      const b = d.box
      if (!(Array.isArray(b) && b.length === 4 && b.every(isNumber))) {
        return this.error(where, `${field}.box: expected [x1, y1, x2, y2] numbers, got ${show(b)}`)
      }
      const [x1, y1, x2, y2] = b
      if (!(x1 >= 0 && x1 <= x2 && x2 <= w && y1 >= 0 && y1 <= y2 && y2 <= h)) {
        this.error(where, `${field}.box: expected 0 <= x1 <= x2 <= ${w} and 0 <= y1 <= y2 <= ${h}, got ${show(b)}`)
      }
    })
    this.checkScored(where, "detections", dets.filter(isObject), "score")
  }

  checkClasses(where, classes) {
    if (!Array.isArray(classes)) return this.error(where, `classes: expected a list, got ${show(classes)}`)
    classes.forEach((c, k) => {
      if (this.checkLabelled(where, `classes[${k}]`, c) && !(isNumber(c.score) && c.score >= 0 && c.score <= 1)) {
        this.error(where, `classes[${k}].score: expected a number in [0, 1], got ${show(c.score)}`)
      }
    })
    this.checkScored(where, "classes", classes.filter(isObject), "score")
  }

  checkSegmentation(where, parts, h, w, ht) {
    const fractions = h.class_fractions
    const declared = new Map()
    if (!Array.isArray(fractions)) this.error(where, `class_fractions: expected a list, got ${show(fractions)}`)
    else {
      fractions.forEach((c, k) => {
        if (!this.checkLabelled(where, `class_fractions[${k}]`, c)) return
        if (!(isNumber(c.fraction) && c.fraction > 0 && c.fraction <= 1)) {
          this.error(where, `class_fractions[${k}].fraction: expected a number in (0, 1], got ${show(c.fraction)}`)
        }
        if (declared.has(c.class_id)) this.error(where, `class_fractions: class_id ${c.class_id} appears twice`)
        declared.set(c.class_id, c.fraction)
      })
      const sum = fractions.reduce((s, c) => s + (isNumber(c?.fraction) ? c.fraction : 0), 0)
      // each fraction is rounded to 6 decimals
      if (Math.abs(sum - 1) > 1e-6 * fractions.length + 1e-9) this.error(where, `class_fractions: expected a sum of 1, got ${sum}`)
    }
    const m = h.mask
    if (!isObject(m)) return this.error(where, `mask: expected an object, got ${show(m)}`)
    if (!(isInt(m.frame) && m.frame >= 2 && m.frame < parts.length)) {
      return this.error(where, `mask.frame: expected the index of a payload part (2..${parts.length - 1}), got ${show(m.frame)}`)
    }
    if (parts.length !== 3) this.error(where, `expected 3 parts (topic, header, mask), got ${parts.length}`)
    if (!(Array.isArray(m.shape) && m.shape.length === 2 && m.shape[0] === ht && m.shape[1] === w)) {
      this.error(where, `mask.shape: expected [height, width] = [${ht}, ${w}], got ${show(m.shape)}`)
    }
    // uint8, or uint16 for models with more than 256 classes (raw: little-endian; png: 16-bit)
    const bytes = m.dtype === "uint8" ? 1 : m.dtype === "uint16" ? 2 : undefined
    if (bytes === undefined) return this.error(where, `mask.dtype: expected "uint8" or "uint16", got ${show(m.dtype)}`)
    const payload = parts[m.frame]
    let classMap
    if (m.encoding === "raw") {
      const size = ht * w * bytes
      if (payload.length !== size) {
        return this.error(where, `mask: expected height*width${bytes > 1 ? "*2" : ""} = ${size} bytes, got ${payload.length}`)
      }
      classMap = bytes === 1 ? payload : Array.from({ length: ht * w }, (_, i) => payload.readUInt16LE(2 * i))
    } else if (m.encoding === "png") {
      const png = decodePng(payload, 8 * bytes)
      if (png.error) return this.error(where, `mask: ${png.error}`)
      if (png.width !== w || png.height !== ht) return this.error(where, `mask: the PNG is ${png.width}x${png.height}, the frame ${w}x${ht}`)
      classMap = png.pixels
    } else return this.error(where, `mask.encoding: expected "raw" or "png", got ${show(m.encoding)}`)
    // the fractions are the mask's own histogram: same classes, same shares
    const histogram = new Map()
    for (const v of classMap) histogram.set(v, (histogram.get(v) ?? 0) + 1)
    for (const [id, count] of histogram) {
      const share = count / classMap.length
      if (!declared.has(id)) this.error(where, `class_fractions: class ${id} covers ${share} of the mask but is not listed`)
      else if (Math.abs(declared.get(id) - share) > 1e-6) {
        this.error(where, `class_fractions: class ${id} is listed at ${declared.get(id)}, the mask has ${share}`)
      }
    }
    for (const id of declared.keys()) if (!histogram.has(id)) this.error(where, `class_fractions: class ${id} is listed but absent from the mask`)
  }
}

/**
 * The pixels of a grayscale, non-interlaced PNG of bit depth ``depth`` (8, or 16 for models with
 * more than 256 classes: what the engine writes for class maps), as an array of sample values, or
 * {error}. Node has zlib but no PNG decoder: inflate the IDAT chunks and undo the row filters.
 */
function decodePng(buf, depth) {
  if (buf.length < 33 || !buf.subarray(0, 8).equals(PNG_SIGNATURE)) {
    return { error: "encoding png, but the payload does not start with the PNG signature" }
  }
  let width = 0
  let height = 0
  const idat = []
  let ended = false
  for (let at = 8; at + 12 <= buf.length && !ended; ) {
    const length = buf.readUInt32BE(at)
    const type = buf.toString("latin1", at + 4, at + 8)
    const data = buf.subarray(at + 8, at + 8 + length)
    if (data.length !== length) return { error: `PNG chunk ${type} is cut short` }
    if (at === 8) {
      if (type !== "IHDR" || length !== 13) return { error: `the first PNG chunk should be IHDR, got ${type}` }
      width = data.readUInt32BE(0)
      height = data.readUInt32BE(4)
      const [bits, colour, , , interlace] = data.subarray(8, 13)
      if (bits !== depth || colour !== 0 || interlace !== 0) {
        return { error: `expected a ${depth}-bit grayscale non-interlaced PNG, got depth ${bits}, colour type ${colour}, interlace ${interlace}` }
      }
    } else if (type === "IDAT") idat.push(data)
    else if (type === "IEND") ended = true
    at += 12 + length
  }
  if (!ended) return { error: "the PNG has no IEND chunk" }
  let raw
  try {
    raw = inflateSync(Buffer.concat(idat))
  } catch (exc) {
    return { error: `the PNG's image data does not inflate (${exc.message})` }
  }
  const bpp = depth / 8 // bytes per pixel: the filters predict each byte from the same byte of the pixel to the left
  const rowBytes = width * bpp
  const stride = rowBytes + 1 // a filter-type byte, then the pixels
  if (raw.length !== height * stride) return { error: `the PNG's image data has ${raw.length} bytes, ${width}x${height} needs ${height * stride}` }
  const bytes = Buffer.alloc(rowBytes * height)
  for (let y = 0; y < height; y++) {
    const filter = raw[y * stride]
    const row = raw.subarray(y * stride + 1, (y + 1) * stride)
    const out = y * rowBytes
    for (let x = 0; x < rowBytes; x++) {
      const a = x >= bpp ? bytes[out + x - bpp] : 0
      const b = y > 0 ? bytes[out - rowBytes + x] : 0
      const c = x >= bpp && y > 0 ? bytes[out - rowBytes + x - bpp] : 0
      let predictor
      if (filter === 0) predictor = 0
      else if (filter === 1) predictor = a
      else if (filter === 2) predictor = b
      else if (filter === 3) predictor = (a + b) >> 1
      else if (filter === 4) {
        const p = a + b - c
        const [pa, pb, pc] = [Math.abs(p - a), Math.abs(p - b), Math.abs(p - c)]
        predictor = pa <= pb && pa <= pc ? a : pb <= pc ? b : c
      } else return { error: `PNG row ${y} has an unknown filter type ${filter}` }
      bytes[out + x] = (row[x] + predictor) & 0xff
    }
  }
  // 16-bit samples are big-endian in a PNG
  const pixels = bpp === 1 ? bytes : Array.from({ length: width * height }, (_, i) => bytes.readUInt16BE(2 * i))
  return { width, height, pixels }
}

async function main() {
  const args = parseArgs(process.argv.slice(2))
  const checker = new Checker(args.prefixes, args.sources)
  const started = performance.now()
  const deadline = started + args.timeoutS * 1000
  const sock = new Subscriber({ linger: 0 })
  let timedOut = false
  try {
    sock.connect(args.endpoint) // no peer needed yet: zmq connects once the engine binds
    sock.subscribe(...args.prefixes)
    process.stderr.write(`READY ${args.endpoint} ${JSON.stringify(args.prefixes)}\n`)
    while (!checker.done()) {
      const left = Math.ceil(deadline - performance.now())
      if (left <= 0) {
        timedOut = true
        break
      }
      sock.receiveTimeout = left
      let parts
      try {
        parts = await sock.receive()
      } catch (exc) {
        if (exc.code === "EAGAIN") {
          timedOut = true
          break
        }
        throw exc
      }
      checker.check(parts)
    }
  } finally {
    sock.close()
  }
  if (timedOut) checker.error("timeout", `no eos for ${show(checker.missing())} within ${args.timeoutS} s`)
  if (checker.errorCount > checker.errors.length) {
    checker.errors.push(`... and ${checker.errorCount - checker.errors.length} more errors`)
  }
  const summary = {
    ok: checker.errorCount === 0,
    endpoint: args.endpoint,
    subscriptions: args.prefixes,
    messages: checker.messages,
    counts: checker.counts,
    sources: checker.sources,
    errors: checker.errors,
    elapsed_s: Math.round(performance.now() - started) / 1000,
  }
  process.stdout.write(`${JSON.stringify(summary)}\n`)
  process.exitCode = summary.ok ? 0 : 1
}

main().catch((exc) => {
  process.stderr.write(`subscriber.mjs: ${exc?.stack ?? exc}\n`)
  process.exitCode = 1
})
