// fusionlab graph widget: lays out the DOT that Python sends (Graphviz compiled to
// WebAssembly, bundled: nothing is fetched at run time), draws it, pans and zooms,
// shows hover facts, and turns clicks into state changes on the model:
//   click a candidate's cluster -> selected (Python validates with plan.select)
//   click a node                -> focused ("fw0:name"; Python focuses its candidate)
//   click a module box          -> expanded (+ that module)
import { Graphviz } from "@hpcc-js/wasm-graphviz";

let graphvizPromise = null;
const layoutCache = new Map(); // dot text -> svg text (the last few)

function graphviz() {
  if (!graphvizPromise) graphvizPromise = Graphviz.load();
  return graphvizPromise;
}

async function layout(dot) {
  if (layoutCache.has(dot)) return layoutCache.get(dot);
  const gv = await graphviz();
  const svg = gv.dot(dot, "svg");
  layoutCache.set(dot, svg);
  if (layoutCache.size > 24) layoutCache.delete(layoutCache.keys().next().value);
  return svg;
}

// Python's viz.graph SELECTED / UNSELECTED cluster styles, and the module box colour
const SEL = { color: "#dc2626", width: "3", fill: "#fff7ed" };
const UNSEL = { color: "#6b7280", width: "1.2" };
const BOX_COLOR = "#4338ca";

const STYLE_TEXT = `
.flg { font: 12px Helvetica, Arial, sans-serif; color: #111827; position: relative; }
.flg-bar { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; margin-bottom: 4px; }
.flg-bar button { font-size: 12px; padding: 2px 8px; border: 1px solid #d1d5db; background: #fff; border-radius: 4px; cursor: pointer; }
.flg-bar button.on { background: #1f2937; color: #fff; }
.flg-search { position: relative; }
.flg-search input { width: 220px; font-size: 12px; padding: 2px 6px; }
.flg-results { position: absolute; z-index: 20; background: #fff; border: 1px solid #d1d5db; max-height: 260px; overflow: auto; width: 360px; display: none; }
.flg-results div { padding: 2px 6px; cursor: pointer; white-space: nowrap; }
.flg-results div:hover, .flg-results div.active { background: #eef2ff; }
.flg-msg { min-height: 16px; margin: 2px 0; }
.flg-msg.refused { color: #b91c1c; }
.flg-canvas { border: 1px solid #e5e7eb; overflow: hidden; position: relative; cursor: grab; background: #fff; }
.flg-canvas svg { width: 100%; height: 100%; user-select: none; }
.flg-canvas .node, .flg-canvas .cluster { cursor: pointer; }
.flg-canvas .cluster > polygon { pointer-events: all; }
.flg-canvas .cluster:hover > polygon { stroke-width: 2.5px; }
.flg-canvas .focus polygon, .flg-canvas .focus path { stroke: #7c3aed !important; stroke-width: 3px; }
.flg-tip { position: absolute; z-index: 30; background: #111827; color: #f9fafb; padding: 6px 8px; border-radius: 4px; pointer-events: none; max-width: 460px; white-space: pre-wrap; font: 11px ui-monospace, Menlo, monospace; display: none; }
.flg-chip { background: #eef2ff; border: 1px solid #c7d2fe; border-radius: 10px; padding: 0 6px; }
.flg-chip b { cursor: pointer; margin-left: 4px; }
.flg-status { color: #6b7280; }
`;

function h(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
}

function tipText(it, view) {
  if (!it) return "";
  if (it.type === "module") {
    return `${it.module}  (${it.module_type || "module"})\n${it.ops} ops, ${it.candidates} candidates, ${it.selected} selected` +
      (it.inductor ? `\n${it.inductor}` : "") + "\nclick to open";
  }
  const lines = [`${it.name} = ${it.op}  (${it.kind})`, `${it.shape || "-"}  ${it.bytes}`];
  lines.push(`module: ${it.module || "-"}`);
  if (it.source) lines.push(`source: ${it.source}`);
  if (it.candidate) {
    const c = view.clusters[it.candidate];
    lines.push(`in ${it.candidate}${c && c.selected ? " (selected)" : ""}`);
  } else if (it.why_not) lines.push(`not fused: ${it.why_not}`);
  else if (it.kind === "placeholder") lines.push("an input of the graph (parameter, model input or saved tensor)");
  if (it.output) lines.push("an output of the graph");
  if (it.inductor) lines.push(it.inductor);
  return lines.join("\n");
}

function render({ model, el }) {
  const style = h("style");
  style.textContent = STYLE_TEXT;
  const tabs = h("span");
  const input = h("input", { type: "search", placeholder: "find a node, op or module", "data-role": "search" });
  const results = h("div", { class: "flg-results" });
  const chips = h("span");
  const status = h("span", { class: "flg-status" });
  const bar = h("div", { class: "flg-bar" }, tabs,
    h("span", { class: "flg-search" }, input, results),
    h("button", { onclick: () => fit(), title: "fit the drawing to the box" }, "fit"),
    h("button", { onclick: () => { model.set("expanded", []); model.save_changes(); } }, "collapse all"),
    chips, status);
  const msg = h("div", { class: "flg-msg", "data-role": "message" });
  const canvas = h("div", { class: "flg-canvas", "data-role": "canvas" });
  const tip = h("div", { class: "flg-tip" });
  const root = h("div", { class: "flg" }, style, bar, msg, canvas, tip);
  el.append(root);

  let svg = null;
  let box = null; // current viewBox [x, y, w, h]
  let full = null; // the drawing's own box
  let drawn = ""; // dot text drawn
  let drawnLayout = ""; // its view's layout key (the dot with no selection and no focus)
  let seq = 0;

  function setBox(b) {
    box = b;
    if (svg) svg.setAttribute("viewBox", b.join(" "));
  }

  function fit() {
    if (full) setBox(full.slice());
  }

  // the whole drawing when it is readable; else its top, at a readable scale
  function readable() {
    if (!full) return;
    const r = canvas.getBoundingClientRect();
    const s = Math.min(r.width / full[2], r.height / full[3]);
    if (s >= 0.55 || !r.width) { fit(); return; }
    const w = r.width / 0.55, hh = r.height / 0.55;
    setBox([full[0] + full[2] / 2 - w / 2, full[1], w, hh]);
  }

  // show `elem` whole, at a readable scale, in the middle of the box
  function center(elem) {
    if (!svg || !elem || !box) return;
    // getBBox is in the element's own coordinates: apply Graphviz's top-level transform
    const local = elem.getBBox();
    const g = svg.querySelector("g.graph");
    const m = g && g.transform.baseVal.consolidate() ? g.transform.baseVal.consolidate().matrix : { a: 1, d: 1, e: 0, f: 0 };
    const bb = { x: m.a * local.x + m.e, y: m.d * local.y + m.f, width: m.a * local.width, height: m.d * local.height };
    const r = canvas.getBoundingClientRect();
    const aspect = r.width && r.height ? r.width / r.height : 2;
    let nw = Math.max(bb.width * 1.3, Math.min(r.width / 0.9 || 600, full ? full[2] : 600));
    let nh = Math.max(bb.height * 1.3, 200);
    if (nw / nh < aspect) nw = nh * aspect; else nh = nw / aspect;
    setBox([bb.x + bb.width / 2 - nw / 2, bb.y + bb.height / 2 - nh / 2, nw, nh]);
  }

  function tabsUpdate() {
    tabs.replaceChildren(...model.get("graphs").map((g) =>
      h("button", { class: g === model.get("graph") ? "on" : "", "data-graph": g,
        onclick: () => { model.set("graph", g); model.save_changes(); } }, g)));
  }

  function chipsUpdate() {
    const open = model.get("expanded");
    const tops = open.filter((p) => !open.some((q) => q.startsWith(p + ".")));
    chips.replaceChildren(...tops.slice(-4).map((p) => h("span", { class: "flg-chip" }, p,
      h("b", { title: `close ${p}`, onclick: () => {
        model.set("expanded", model.get("expanded").filter((q) => q !== p && !q.startsWith(p + ".")));
        model.save_changes();
      } }, "×"))));
  }

  function messageUpdate() {
    const m = model.get("message");
    msg.textContent = m;
    msg.className = "flg-msg" + (m.startsWith("refused") ? " refused" : "");
  }

  function highlight() {
    if (!svg) return;
    svg.querySelectorAll(".focus").forEach((e) => e.classList.remove("focus"));
    const view = model.get("view");
    let target = null;
    if (view.focus) target = svg.querySelector(`g.node[id="${CSS.escape(view.focus)}"]`);
    const fc = view.focus_candidate;
    const cl = fc ? svg.querySelector(`g.cluster[id="${CSS.escape("c:" + fc)}"]`) : null;
    if (cl) cl.classList.add("focus");
    if (target) target.classList.add("focus");
    if (target || cl) center(cl || target);
  }

  // the selection (and focus) changed, not the layout: restyle the drawing in place
  function restyle(view) {
    for (const [cid, c] of Object.entries(view.clusters)) {
      const g = svg.querySelector(`g.cluster[id="${CSS.escape("c:" + cid)}"]`);
      if (!g) continue;
      const shape = g.querySelector("polygon, path");
      if (shape) {
        shape.setAttribute("stroke", c.selected ? SEL.color : UNSEL.color);
        shape.setAttribute("stroke-width", c.selected ? SEL.width : UNSEL.width);
        shape.setAttribute("fill", c.selected ? SEL.fill : "none");
        if (c.selected) shape.removeAttribute("stroke-dasharray");
        else shape.setAttribute("stroke-dasharray", "5,2");
      }
      const t = g.querySelector("text");
      if (t) t.textContent = (c.selected ? "[x] " : "") + cid;
    }
    for (const [vid, it] of Object.entries(view.items)) {
      if (it.type !== "module") continue;
      const g = svg.querySelector(`g.node[id="${CSS.escape(vid)}"]`);
      if (!g) continue;
      const texts = g.querySelectorAll("text");
      if (texts.length >= 3) texts[texts.length - 1].textContent = `${it.candidates} candidates, ${it.selected} selected`;
      const shape = g.querySelector("polygon, path");
      if (shape) shape.setAttribute("stroke", it.selected ? SEL.color : BOX_COLOR);
    }
  }

  async function draw() {
    const view = model.get("view");
    if (!view || !view.dot) return;
    if (view.dot === drawn) { highlight(); canvas.drawnDot = drawn; return; }
    if (svg && view.layout && view.layout === drawnLayout && view.graph === canvas.dataset.graph) {
      ++seq; // a layout still running for an older view must not replace this one
      restyle(view);
      drawn = view.dot;
      highlight();
      canvas.dataset.restyled = String(Number(canvas.dataset.restyled || 0) + 1);
      canvas.drawnDot = drawn;
      return;
    }
    const mine = ++seq;
    const n = Object.keys(view.items).length;
    status.textContent = `laying out ${n} items…`;
    const t0 = performance.now();
    let text;
    try {
      text = await layout(view.dot);
    } catch (e) {
      status.textContent = `layout failed: ${e}`;
      return;
    }
    if (mine !== seq) return; // a newer view arrived meanwhile
    const keep = svg && drawn && view.graph === canvas.dataset.graph ? box : null;
    canvas.innerHTML = text.slice(text.indexOf("<svg"));
    svg = canvas.querySelector("svg");
    svg.querySelectorAll("title").forEach((t) => t.remove()); // our own hover replaces them
    svg.removeAttribute("width");
    svg.removeAttribute("height");
    full = svg.getAttribute("viewBox").split(/\s+/).map(Number);
    drawn = view.dot;
    drawnLayout = view.layout || "";
    canvas.dataset.graph = view.graph;
    canvas.dataset.items = String(n);
    canvas.dataset.ms = String(Math.round(performance.now() - t0));
    status.textContent = `${view.graph} (${view.kind}): ${n} items, ${Object.keys(view.clusters).length} candidates shown, layout ${canvas.dataset.ms} ms`;
    if (keep) setBox(keep); else readable();
    highlight();
    canvas.dataset.ready = String(mine);
    canvas.drawnDot = drawn; // tests wait for this to equal the model's view.dot
  }

  // ---- clicks and hover
  canvas.addEventListener("click", (ev) => {
    if (moved) return;
    const view = model.get("view");
    const node = ev.target.closest("g.node");
    if (node) {
      const it = view.items[node.id];
      if (!it) return;
      if (it.type === "module") {
        model.set("expanded", [...new Set([...model.get("expanded"), it.module])]);
      } else {
        model.set("focused", `${view.graph}:${node.id}`);
      }
      model.save_changes();
      return;
    }
    const cl = ev.target.closest("g.cluster");
    if (cl && cl.id.startsWith("c:")) {
      const cid = cl.id.slice(2);
      const sel = model.get("selected");
      model.set("selected", sel.includes(cid) ? sel.filter((c) => c !== cid) : [...sel, cid]);
      model.save_changes();
    }
  });

  canvas.addEventListener("mousemove", (ev) => {
    const view = model.get("view");
    const node = ev.target.closest && ev.target.closest("g.node");
    const cl = !node && ev.target.closest && ev.target.closest("g.cluster");
    let text = "";
    if (node) text = tipText(view.items[node.id], view);
    else if (cl && cl.id.startsWith("c:")) {
      const c = view.clusters[cl.id.slice(2)];
      if (c) text = `${cl.id.slice(2)}  (${c.pattern})\n${c.selected ? "selected: click to deselect" : "click to select"}${c.partial ? "\nsome members are in closed modules" : ""}`;
    }
    if (!text || dragging) { tip.style.display = "none"; return; }
    tip.textContent = text;
    const r = root.getBoundingClientRect();
    tip.style.left = `${ev.clientX - r.left + 14}px`;
    tip.style.top = `${ev.clientY - r.top + 14}px`;
    tip.style.display = "block";
  });
  canvas.addEventListener("mouseleave", () => { tip.style.display = "none"; });

  // ---- pan and zoom (viewBox)
  let dragging = null;
  let moved = false;
  canvas.addEventListener("wheel", (ev) => {
    if (!svg || !box) return;
    ev.preventDefault();
    const r = svg.getBoundingClientRect();
    const k = Math.exp(ev.deltaY * 0.0015);
    // the viewBox is letterboxed into the element (preserveAspectRatio meet)
    const s = Math.max(box[2] / r.width, box[3] / r.height);
    const ox = box[0] + (box[2] - r.width * s) / 2, oy = box[1] + (box[3] - r.height * s) / 2;
    const px = ox + (ev.clientX - r.left) * s, py = oy + (ev.clientY - r.top) * s;
    setBox([px - (px - box[0]) * k, py - (py - box[1]) * k, box[2] * k, box[3] * k]);
  }, { passive: false });
  canvas.addEventListener("mousedown", (ev) => {
    if (!svg || !box) return;
    dragging = { x: ev.clientX, y: ev.clientY, box: box.slice() };
    moved = false;
    canvas.style.cursor = "grabbing";
  });
  window.addEventListener("mousemove", (ev) => {
    if (!dragging) return;
    const r = svg.getBoundingClientRect();
    const s = Math.max(dragging.box[2] / r.width, dragging.box[3] / r.height);
    const dx = ev.clientX - dragging.x, dy = ev.clientY - dragging.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) moved = true;
    setBox([dragging.box[0] - dx * s, dragging.box[1] - dy * s, dragging.box[2], dragging.box[3]]);
  });
  window.addEventListener("mouseup", () => {
    dragging = null;
    canvas.style.cursor = "";
    setTimeout(() => { moved = false; }, 0);
  });

  // ---- search
  let matches = [];
  function search() {
    const q = input.value.trim().toLowerCase();
    const rows = (model.get("index") || {})[model.get("graph")] || [];
    matches = q ? rows.filter((r) => r.some((f) => f && f.toLowerCase().includes(q))).slice(0, 40) : [];
    results.replaceChildren(...matches.map((r, i) => h("div", { class: i === 0 ? "active" : "",
      onmousedown: (e) => { e.preventDefault(); pick(r); } }, `${r[0]}  ·  ${r[1]}  ·  ${r[2]}`)));
    results.style.display = matches.length ? "block" : "none";
  }
  function pick(r) {
    results.style.display = "none";
    const graph = model.get("graph");
    if (r[1] === "module") {
      const parts = r[0].split(".");
      const add = parts.map((_, i) => parts.slice(0, i + 1).join("."));
      model.set("expanded", [...new Set([...model.get("expanded"), ...add])]);
    } else if (r[1] === "candidate") {
      model.set("focused", "");
      model.set("focus_candidate", r[0]);
    } else {
      model.set("focused", `${graph}:${r[0]}`);
    }
    model.save_changes();
  }
  input.addEventListener("input", search);
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && matches.length) pick(matches[0]);
    if (ev.key === "Escape") results.style.display = "none";
  });
  input.addEventListener("blur", () => { results.style.display = "none"; });

  function all() {
    canvas.style.height = model.get("height") || "640px";
    tabsUpdate();
    chipsUpdate();
    messageUpdate();
    draw();
  }
  model.on("change:view", draw);
  model.on("change:graph", tabsUpdate);
  model.on("change:graphs", tabsUpdate);
  model.on("change:expanded", chipsUpdate);
  model.on("change:message", messageUpdate);
  model.on("change:height", () => { canvas.style.height = model.get("height"); });
  all();
  return () => { root.remove(); };
}

export default { render };
