"""The page itself: one HTML document with its style and plain script inline (no build step, no external files).

The script builds every element with ``textContent`` (never ``innerHTML``), so camera ids and error messages from
Kafka or the server cannot inject markup; the server's Content-Security-Policy allows only this page's own inline
script, by nonce. It sends the image as the raw body of ``POST /api/queries`` with the fields as URL parameters,
then follows the answer with server-sent events (``/api/queries/<id>/events``), falling back to polling
``/api/queries/<id>`` when the event stream breaks.
"""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = ["render_page"]

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f4f5f8}
header{background:#1d2330;color:#fff;padding:10px 20px}header h1{font-size:18px;margin:0}
main{display:grid;grid-template-columns:340px 1fr;gap:20px;padding:20px}
section{background:#fff;border-radius:6px;padding:14px;box-shadow:0 1px 3px #0002}
label{display:block;margin:8px 0 2px;font-weight:600}input,select{width:100%;box-sizing:border-box;padding:4px}
#drop{border:2px dashed #99a;border-radius:6px;padding:12px;text-align:center;color:#556}
#preview{max-width:100%;max-height:180px;display:none;margin:8px auto 0}
button{margin-top:12px;width:100%;padding:8px;font-weight:600;background:#2b6cb0;color:#fff;border:0;
border-radius:4px;cursor:pointer}button:disabled{background:#99a}
.error{background:#fde8e8;color:#9b1c1c;border:1px solid #f5b5b5;padding:8px;border-radius:4px;margin-top:10px}
.note{color:#556}table{border-collapse:collapse;width:100%;margin:6px 0 14px}
th,td{border-bottom:1px solid #e3e5ea;padding:3px 6px;text-align:left}td.num{text-align:right}
h2{font-size:15px;margin:14px 0 4px}.bar{background:#2b6cb0;height:10px;display:inline-block}
#frames{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;width:300px}
.frame{position:relative;background:#ccd;min-height:60px}.frame img{width:100%;display:block}
.frame svg{position:absolute;left:0;top:0;width:100%;height:100%}
figcaption{font-size:12px;color:#334}.status-complete{color:#276749}.status-partial{color:#975a16}
.status-error{color:#9b1c1c}
"""

_BODY = """
<header><h1>l2g-stream: where and when does this image appear?</h1></header>
<main>
<section id="ask">
  <form id="form">
    <div id="drop">Choose a JPEG or PNG, or paste one (Ctrl+V) anywhere on the page
      <input id="image" type="file" accept="image/jpeg,image/png">
      <img id="preview" alt="query image">
    </div>
    <label for="cameras">Cameras (comma-separated; empty: all)</label>
    <input id="cameras" list="camera-list" autocomplete="off"><datalist id="camera-list"></datalist>
    <label for="time_from">From (your local time; empty: no bound)</label>
    <input id="time_from" type="datetime-local" step="1">
    <label for="time_to">Until</label><input id="time_to" type="datetime-local" step="1">
    <label for="k">Matches (k)</label><input id="k" type="number" min="1" max="1000">
    <label for="mode">Mode</label><select id="mode"></select>
    <label for="timeout">Answer budget (s)</label><input id="timeout" type="number" min="0.1" step="0.1">
    <button id="submit" type="submit">Search</button>
  </form>
  <div id="message" role="alert"></div>
</section>
<section id="answer"><p class="note" id="status">No query yet.</p><div id="result"></div></section>
</main>
"""

_SCRIPT = r"""
"use strict";
const $ = (id) => document.getElementById(id);
let image = null, stream = null, pollTimer = null;
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
function svgEl(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}
function inliers(g) { return g ? (g.status === "verified" ? g.inliers : "none") : "-"; }
function fmt(x, digits) { return (typeof x === "number") ? x.toFixed(digits) : "-"; }
function table(id, head, rows) {
  const t = el("table", {id});
  t.append(el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))));
  const body = el("tbody");
  for (const r of rows) body.append(r);
  t.append(body);
  return t;
}
function showMessage(text) { $("message").replaceChildren(text ? el("div", {class: "error"}, text) : ""); }
function setImage(blob) {
  if (!blob) return;
  image = blob;
  const p = $("preview"); p.src = URL.createObjectURL(blob); p.style.display = "block";
  showMessage("");
}
$("image").addEventListener("change", (e) => setImage(e.target.files[0]));
document.addEventListener("paste", (e) => {
  for (const item of e.clipboardData.items) if (item.kind === "file") { setImage(item.getAsFile()); break; }
});
function init() {
  for (const m of CONFIG.modes) $("mode").append(el("option", {value: m}, m));
  $("mode").value = CONFIG.mode; $("k").value = CONFIG.k; $("timeout").value = CONFIG.timeout_s;
  for (const c of CONFIG.cameras) $("camera-list").append(el("option", {value: c}));
}
function unix(id) { const v = $(id).value; return v ? String(new Date(v).getTime() / 1000) : ""; }
$("form").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!image) { showMessage("Choose or paste an image first."); return; }
  if (image.size > CONFIG.max_upload_bytes) {
    showMessage(`The image is ${image.size} bytes; at most ${CONFIG.max_upload_bytes} bytes are accepted.`);
  }
  const q = new URLSearchParams({k: $("k").value, mode: $("mode").value, cameras: $("cameras").value,
    time_from: unix("time_from"), time_to: unix("time_to"), timeout: $("timeout").value});
  $("submit").disabled = true;
  try {
    const resp = await fetch("/api/queries?" + q, {method: "POST", body: image, credentials: "same-origin",
      headers: {"Content-Type": image.type || "application/octet-stream", "X-L2G-UI": "1"}});
    const data = await resp.json().catch(() => ({error: `HTTP ${resp.status}`}));
    if (!resp.ok) { showMessage(data.error || `HTTP ${resp.status}`); return; }
    showMessage(""); follow(data);
  } catch (err) { showMessage("The server cannot be reached: " + err); }
  finally { $("submit").disabled = false; }
});
function follow(sub) {
  if (stream) stream.close();
  if (pollTimer) clearTimeout(pollTimer);
  $("status").textContent = "Sent; waiting for the answer…";
  $("result").replaceChildren();
  stream = new EventSource(sub.events_url);
  stream.addEventListener("waiting", (e) => waiting(JSON.parse(e.data)));
  for (const kind of ["answered", "timed_out"]) {
    stream.addEventListener(kind, (e) => { stream.close(); render(JSON.parse(e.data)); });
  }
  stream.onerror = () => { stream.close(); poll(sub.result_url); };
}
function poll(url) {
  fetch(url, {credentials: "same-origin"}).then((r) => r.json()).then((v) => {
    if (v.state === "waiting") { waiting(v); pollTimer = setTimeout(() => poll(url), 500); } else render(v);
  }).catch(() => { pollTimer = setTimeout(() => poll(url), 1000); });
}
function waiting(v) {
  $("status").textContent = `Waiting for the answer… ${(v.elapsed_ms / 1000).toFixed(1)} s`;
}
function render(v) {
  const out = $("result");
  out.replaceChildren();
  if (v.state === "timed_out") {
    $("status").textContent = "No answer within the budget (is a worker running?).";
    return;
  }
  const a = v.answer;
  $("status").replaceChildren(el("span", {id: "answer-status", class: "status-" + a.status}, a.status),
    ` — mode ${a.mode}, answered by ${a.worker_id} at ${a.answered_at}, ${a.round_trip_ms} ms after sending`);
  if (a.error) out.append(el("div", {class: "error", id: "answer-error"}, a.error));
  out.append(el("h2", {}, "Query"), el("img", {src: v.image_url, id: "query-image", alt: "query",
    style: "max-height:120px"}));
  out.append(el("h2", {}, "Segments"));
  if (a.segments.length) {
    out.append(table("segments", ["camera", "from", "to", "best frame", "score", "matches", "ranks"],
      a.segments.map((s) => el("tr", {"data-camera": s.camera_id}, el("td", {}, s.camera_id),
        el("td", {}, s.start_time), el("td", {}, s.end_time), el("td", {class: "num"}, s.best_frame),
        el("td", {class: "num"}, fmt(s.score, 4)), el("td", {class: "num"}, s.frame_count),
        el("td", {}, s.match_ranks.join(", "))))));
  } else out.append(el("p", {class: "note"}, "No segments in this answer."));
  out.append(el("h2", {}, "Matches"));
  if (a.matches.length) {
    out.append(table("matches", ["#", "camera", "frame", "time", "score", "inliers"],
      a.matches.map((m) => el("tr", {"data-camera": m.camera_id, "data-frame": m.frame},
        el("td", {class: "num"}, m.rank), el("td", {}, m.camera_id), el("td", {class: "num"}, m.frame),
        el("td", {}, m.time), el("td", {class: "num"}, fmt(m.score, 4)),
        el("td", {class: "num"}, inliers(m.geometry))))));
    const frames = el("div", {id: "frames"});
    for (const m of a.matches) frames.append(frameFigure(m));
    out.append(el("h2", {}, "Frames"), frames);
  } else out.append(el("p", {class: "note", id: "no-match"}, "No match."));
  out.append(el("h2", {}, "Latency per stage (ms)"));
  const top = Math.max(1, ...a.latency.map((s) => s.ms));
  out.append(table("latency", ["stage", "ms", ""], a.latency.map((s) => el("tr", {}, el("td", {}, s.stage),
    el("td", {class: "num"}, fmt(s.ms, 1)),
    el("td", {}, el("span", {class: "bar", style: `width:${Math.round(200 * s.ms / top)}px`}))))));
  const c = a.coverage;
  out.append(el("h2", {}, "Coverage"), el("p", {id: "coverage"},
    `${c.frames_searched}/${c.frames_total} frames, ${c.shards_searched}/${c.shards_total} shards, ` +
    `${c.partitions_searched}/${c.partitions_total} partitions, ${c.complete ? "complete" : "INCOMPLETE"}` +
    (c.indexed_from_time ? `; index spans ${c.indexed_from_time} .. ${c.indexed_to_time}` : "")));
  for (const n of c.notes || []) out.append(el("p", {class: "note"}, "note: " + n));
}
function frameFigure(m) {
  const box = el("div", {class: "frame"});
  const g = m.geometry;
  const caption = `#${m.rank} ${m.camera_id} frame ${m.frame}, ${m.time}, score ${fmt(m.score, 4)}` +
    (g ? (g.status === "verified" ? `, ${g.inliers} inliers (${g.model})` : `, no geometry: ${g.reason || ""}`) : "");
  if (!m.frame_url) {
    box.append(el("p", {class: "note"}, "frame image not available (the answer does not say where it lives)"));
    return el("figure", {}, box, el("figcaption", {}, caption));
  }
  const img = el("img", {src: m.frame_url, alt: `frame ${m.frame} of ${m.camera_id}`, class: "frame-image"});
  box.append(img);
  img.addEventListener("error", () => box.replaceChildren(el("p", {class: "note"}, "frame could not be fetched")));
  if (g && g.status === "verified" && g.polygon) {
    img.addEventListener("load", () => {
      const [w, h] = g.frame_size || [img.naturalWidth, img.naturalHeight];
      const svg = svgEl("svg", {viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "none"});
      svg.append(svgEl("polygon", {points: g.polygon.map((p) => p.join(",")).join(" "), fill: "none",
        stroke: "#ff2d55", "stroke-width": Math.max(2, w / 150), class: "outline"}));
      box.append(svg);
    });
  }
  return el("figure", {}, box, el("figcaption", {}, caption));
}
init();
"""


def _json_for_script(data: Any) -> str:
    """JSON that is safe inside a ``<script>`` element (no ``</script>``, no HTML comment openers)."""
    return json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(config: dict[str, Any], nonce: str) -> bytes:
    """The page, with ``config`` (modes, defaults, cameras, upload limit) for its script and the CSP ``nonce``."""
    nonce_attr = html.escape(nonce, quote=True)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>l2g-stream</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<style nonce="{nonce_attr}">{_STYLE}</style></head><body>{_BODY}'
            f'<script nonce="{nonce_attr}">const CONFIG = {_json_for_script(config)};{_SCRIPT}</script>'
            f'</body></html>').encode()
