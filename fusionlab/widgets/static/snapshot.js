// fusionlab explorer snapshot (Explorer.to_html): stands in for the Python kernel.
// The graph widget's own bundle (Graphviz as WebAssembly inside) is inlined in the page as
// base64 and imported from a blob: nothing is fetched. This model answers the widget's
// clicks from the views and kernels embedded in the page (#fl-data), see _snapshot.py.
const data = JSON.parse(document.getElementById("fl-data").textContent);
const b64 = document.getElementById("fl-bundle").textContent.trim();
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const url = URL.createObjectURL(new Blob([bytes], { type: "text/javascript" }));
const widget = (await import(url)).default;
const pane = document.getElementById("fl-pane");
const MARK = "#fde68a";

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

class SnapshotModel {
  constructor() {
    this.handlers = {};
    const first = data.first;
    this.state = {
      graph: first, graphs: data.order, selected: data.selected.slice(), message: "",
      expanded: data.graphs[first].base.expanded, focused: "", focus_candidate: "",
      view: data.graphs[first].base, index: data.index, height: "620px",
    };
  }
  get(k) { return this.state[k]; }
  on(ev, cb) { (this.handlers[ev] ||= []).push(cb); }
  off() {}
  send() {}
  save_changes() {}
  emit(...evs) { for (const ev of evs) for (const cb of this.handlers["change:" + ev] || []) cb(); }
  show(view, focus = "", cand = "") {
    this.state.view = Object.assign({}, view, { focus, focus_candidate: cand });
    this.state.expanded = view.expanded;
    this.state.graph = view.graph;
    this.emit("graph", "expanded", "view");
  }
  say(text) { this.state.message = text; this.emit("message"); }
  views(tag) { const g = data.graphs[tag]; return [g.base, ...Object.values(g.boxes)]; }
  // the view of graph `tag` showing `test(view)`: the one shown if it does, else the first
  find(tag, test) {
    const cur = this.state.view;
    if (cur.graph === tag && test(cur)) return cur;
    return this.views(tag).find(test) || null;
  }
  set(k, v) {
    const s = this.state;
    if (k === "graph") {
      if (data.graphs[v]) this.show(data.graphs[v].base);
    } else if (k === "expanded") {
      const g = data.graphs[s.graph];
      const added = v.filter((p) => !s.expanded.includes(p)).sort((a, b) => b.length - a.length);
      if (!added.length) { this.show(g.base); return; } // collapse all / a chip closed
      const path = added[0];
      const box = Object.keys(g.boxes).find((b) => path === b || path.startsWith(b + "."));
      if (box) this.show(g.boxes[box]);
      else this.say(`${path}: not opened in this snapshot (it holds one open box at a time)`);
    } else if (k === "focused") {
      s.focused = v;
      const [tag, name] = v.split(":");
      if (!name) return;
      const view = this.find(tag, (w) => w.items[name]);
      if (!view) { this.say(`no node ${v} in this snapshot`); return; }
      const cand = view.items[name].candidate || "";
      s.focus_candidate = cand;
      this.show(view, name, cand);
      showKernel(cand, tag, name, view.items[name]);
    } else if (k === "focus_candidate") {
      this.focusCandidate(v);
    } else if (k === "selected") {
      const was = new Set(s.selected);
      const now = new Set(v);
      const cid = [...now].find((c) => !was.has(c)) || [...was].find((c) => !now.has(c));
      if (cid) {
        this.focusCandidate(cid);
        this.say(`a snapshot's selection is fixed: ${cid} is ${was.has(cid) ? "" : "not "}selected in this plan; its kernel is on the right`);
      }
    } else {
      s[k] = v;
    }
  }
  focusCandidate(cid) {
    const k = data.kernels[cid];
    if (!k) { this.say(`no candidate ${cid}`); return; }
    this.state.focus_candidate = cid;
    this.state.focused = "";
    const view = this.find(k.graph, (w) => w.clusters[cid]);
    if (view) this.show(view, "", cid);
    showKernel(cid, k.graph, "", null);
  }
}

function nodeHtml(tag, name, item) {
  if (!name) return "";
  const [op, module, source] = (data.nodes[tag] || {})[name] || [item ? item.op : "", "", ""];
  let out = `<div style="font-size:12px">node <code>${esc(tag)}:${esc(name)}</code> = <code>${esc(op)}</code>`;
  if (module) out += ` in ${esc(module)}`;
  out += source ? `<br>model source: <code style="background:${MARK}">${esc(source)}</code>`
    : "<br>model source: (not recorded for this node)";
  if (item && !item.candidate) out += `<br>in no candidate: ${esc(item.why_not || "not fusible")}`;
  return out + "</div>";
}

function showKernel(cid, tag, node, item) {
  const parts = [];
  const k = cid ? data.kernels[cid] : null;
  if (k) {
    parts.push(`<div style="font-size:13px" data-role="kernel-title"><code>${esc(cid)}</code>: ${esc(k.kind)}, ` +
      `${k.nodes} nodes, ${k.kernels} kernels &rarr; 1, saves ${esc(k.saves)} per step (modeled); ` +
      `<b>${k.selected ? "selected in the plan" : "not selected"}</b>` +
      (k.zero ? ` <span style="color:#6b7280">(${esc(k.zero)})</span>` : "") + "</div>");
  }
  parts.push(nodeHtml(tag, node, item));
  if (k && k.error) {
    parts.push(`<div style="color:#b91c1c">${esc(k.error)}</div>`);
  } else if (k) {
    const marks = new Set((k.marks || {})[node] || []);
    const lines = k.lines.map((l, i) => marks.has(i + 1)
      ? `<span data-mark="${i + 1}" style="display:inline-block;min-width:100%;background:${MARK}">${l}</span>` : l);
    parts.push(k.check || '<div style="color:#6b7280;font-size:13px">not checked before this snapshot</div>');
    parts.push('<pre data-role="kernel-source" style="position:relative;max-height:560px;font-size:12px;line-height:1.35;overflow:auto;white-space:pre;' +
      `background:#f9fafb;border:1px solid #e5e7eb;padding:8px;margin:0">${lines.join("\n")}</pre>`);
  }
  pane.innerHTML = parts.join("");
  // the marked line in the middle of the code view (the page itself does not move)
  const pre = pane.querySelector("[data-role=kernel-source]");
  const m = pane.querySelector("[data-mark]");
  if (pre) pre.scrollTop = m ? Math.max(0, m.offsetTop - pre.clientHeight / 2) : 0;
}

const model = new SnapshotModel();
window.model = model;
widget.render({ model, el: document.getElementById("fl-graph") });
document.querySelectorAll("a[data-cid]").forEach((a) => a.addEventListener("click", (ev) => {
  ev.preventDefault();
  model.focusCandidate(a.dataset.cid);
  window.scrollTo({ top: 0 });
}));
if (data.focused) model.set("focused", data.focused);
else if (data.focus_candidate) model.focusCandidate(data.focus_candidate);
