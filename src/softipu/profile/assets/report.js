/* softipu report page. Hand-written, no libraries, no network: every view is drawn from the JSON
   report embedded in the page (#softipu-report, and #softipu-compare when comparing two runs). */
(function () {
  "use strict";

  function readJSON(id) {
    var node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }
  var R = readJSON("softipu-report");
  var B = readJSON("softipu-compare");

  // -- small helpers ---------------------------------------------------------------------------
  function fmt(n) {
    if (n === null || n === undefined || isNaN(n)) return "";
    if (typeof n === "number" && !Number.isInteger(n)) return n.toLocaleString("en-US", {maximumFractionDigits: 3});
    return Number(n).toLocaleString("en-US");
  }
  function bytes(n) {
    var u = ["B", "kB", "MB", "GB", "TB"], i = 0, v = n;
    while (Math.abs(v) >= 1000 && i < u.length - 1) { v /= 1000; i++; }
    return (i ? v.toFixed(v < 10 ? 2 : 1) : String(Math.round(v))) + " " + u[i];
  }
  function pct(x) { return (100 * x).toFixed(1) + "%"; }
  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "cls") e.className = attrs[k];
      else if (k.slice(0, 2) === "on") e.addEventListener(k.slice(2), attrs[k]);
      else e.setAttribute(k, attrs[k]);
    }
    (kids || []).forEach(function (c) { if (c !== null) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return e;
  }
  function sum(a) { var s = 0; for (var i = 0; i < a.length; i++) s += a[i]; return s; }
  function maxOf(a) { var m = -Infinity; for (var i = 0; i < a.length; i++) if (a[i] > m) m = a[i]; return m; }
  function minOf(a) { var m = Infinity; for (var i = 0; i < a.length; i++) if (a[i] < m) m = a[i]; return a.length ? m : 0; }
  var CAT_COLORS = ["#1f4e79", "#2e86c1", "#85c1e9", "#117a65", "#52be80", "#d4ac0d", "#ca6f1e", "#922b21"];
  var PHASE = {sync: "#922b21", exchange: "#d4ac0d", compute: "#2e86c1"};

  // Colour ramp (dark blue -> teal -> yellow), t in [0, 1].
  function ramp(t) {
    t = Math.max(0, Math.min(1, t));
    var stops = [[13, 8, 135], [84, 2, 163], [139, 10, 165], [185, 50, 137], [219, 92, 104], [244, 136, 73], [254, 188, 43], [240, 249, 33]];
    var x = t * (stops.length - 1), i = Math.min(Math.floor(x), stops.length - 2), f = x - i;
    var a = stops[i], b = stops[i + 1];
    return "rgb(" + [0, 1, 2].map(function (k) { return Math.round(a[k] + f * (b[k] - a[k])); }).join(",") + ")";
  }

  var tip = null;
  function showTip(ev, text) {
    tip.textContent = text;
    tip.style.display = "block";
    var x = ev.clientX + 14, y = ev.clientY + 14;
    if (x + 380 > window.innerWidth) x = ev.clientX - 380;
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }
  function hideTip() { tip.style.display = "none"; }

  // -- sortable, filterable tables ---------------------------------------------------------------
  // columns: [{key, label, text (left aligned), fmt, title}]; rows: objects. Shows the first
  // `limit` rows after filtering; a click on a header sorts by it (again: the other way).
  function makeTable(host, name, columns, rows, opts) {
    opts = opts || {};
    var limit = opts.limit || 500;
    var state = {key: opts.sortKey || null, desc: opts.desc !== false, filter: ""};
    var wrap = el("div", {cls: "tablewrap", "data-table": name});
    var count = el("span", {cls: "note"});
    var search = opts.filter === false ? null : el("input", {type: "search", placeholder: "filter " + name + "...",
      "data-filter": name});
    if (search) search.addEventListener("input", function () { state.filter = search.value.toLowerCase(); render(); });
    wrap.appendChild(el("div", {cls: "controls"}, [search, count]));
    var table = el("table", {cls: "grid", "data-name": name});
    var thead = el("thead"), tbody = el("tbody");
    var tr = el("tr");
    columns.forEach(function (c) {
      var th = el("th", {cls: c.text ? "t" : "", "data-key": c.key, title: c.title || "", text: c.label});
      th.addEventListener("click", function () {
        if (state.key === c.key) state.desc = !state.desc; else { state.key = c.key; state.desc = !c.text; }
        render();
      });
      tr.appendChild(th);
    });
    thead.appendChild(tr);
    table.appendChild(thead);
    table.appendChild(tbody);
    wrap.appendChild(el("div", {cls: "scroll"}, [table]));
    host.appendChild(wrap);
    var searchable = columns.filter(function (c) { return c.text; }).map(function (c) { return c.key; });

    function render() {
      var shown = rows;
      if (state.filter) shown = rows.filter(function (r) {
        return searchable.some(function (k) { return String(r[k]).toLowerCase().indexOf(state.filter) >= 0; });
      });
      if (state.key) {
        var k = state.key, sign = state.desc ? -1 : 1;
        shown = shown.slice().sort(function (a, b) {
          var x = a[k], y = b[k];
          if (typeof x === "string" || typeof y === "string") return sign * String(x).localeCompare(String(y));
          return sign * ((x || 0) - (y || 0));
        });
      }
      Array.prototype.forEach.call(thead.querySelectorAll("th"), function (th) {
        th.classList.remove("sorted-asc", "sorted-desc");
        if (th.getAttribute("data-key") === state.key) th.classList.add(state.desc ? "sorted-desc" : "sorted-asc");
      });
      tbody.textContent = "";
      shown.slice(0, limit).forEach(function (r) {
        var row = el("tr", {cls: r._hl ? "hl" : ""});
        if (opts.rowTip) {
          row.addEventListener("mousemove", function (ev) { showTip(ev, opts.rowTip(r)); });
          row.addEventListener("mouseleave", hideTip);
        }
        columns.forEach(function (c) {
          var v = r[c.key];
          var td = el("td", {cls: (c.text ? "t " : "") + (c.cls || ""), text: c.fmt ? c.fmt(v, r) : (typeof v === "number" ? fmt(v) : String(v === undefined ? "" : v))});
          if (c.cls === "src") td.title = String(v);
          row.appendChild(td);
        });
        tbody.appendChild(row);
      });
      count.textContent = shown.length + " of " + rows.length + " rows" + (shown.length > limit ? " (first " + limit + " shown)" : "");
    }
    render();
    return {render: render, state: state};
  }

  // -- derived figures -----------------------------------------------------------------------------
  function tileMemory(d) {
    var cats = d.memory.categories, names = Object.keys(cats), n = d.target.num_tiles, out = new Array(n).fill(0);
    names.forEach(function (k) { var a = cats[k]; for (var i = 0; i < n; i++) out[i] += a[i]; });
    return out;
  }
  function totals(d) {
    var mem = tileMemory(d), cats = {};
    Object.keys(d.memory.categories).forEach(function (k) { cats[k] = sum(d.memory.categories[k]); });
    var flops = 0;
    d.steps.forEach(function (s) { flops += s.flops * s.count; });
    return {cycles: d.execution.cycles, peakTile: maxOf(mem.concat([0])), totalMemory: sum(mem), flops: flops,
            seconds: d.execution.cycles / d.target.clock_hz, cats: cats, steps: d.steps.length,
            runs: d.execution.runs.length, liveness: maxOf(d.memory.liveness.bytes.concat([0]))};
  }
  function stepRows(d) {
    var peak = d.target.peak_flops_per_cycle || {fp16: 0, fp32: 0};
    var stateOf = {};
    (d.step_memory || []).forEach(function (p) { stateOf[p[0]] = p[1]; });
    return d.steps.map(function (s) {
      return {index: s.index, name: s.name, op: s.op, kind: s.kind, runs: s.count, cycles: s.cycles,
              total: s.cycles * s.count, compute: s.compute_cycles, exchange: s.exchange_cycles, sync: s.sync_cycles,
              flops: s.flops, eff16: peak.fp16 && s.cycles ? s.flops / (s.cycles * peak.fp16) : 0,
              eff32: peak.fp32 && s.cycles ? s.flops / (s.cycles * peak.fp32) : 0,
              bytes: s.bytes_exchanged, state: stateOf[s.index] || 0, source: s.source};
    });
  }

  // -- summary --------------------------------------------------------------------------------------
  function card(k, v) { return el("div", {cls: "card"}, [el("div", {cls: "v", text: v}), el("div", {cls: "k", text: k})]); }
  function viewSummary(host) {
    var t = totals(R), tg = R.target;
    host.appendChild(el("div", {cls: "cards"}, [
      card("cycles (" + t.runs + " run(s))", R.execution.runs.length ? fmt(t.cycles) : "not run"),
      card("time at " + (tg.clock_hz / 1e9).toFixed(3) + " GHz", R.execution.runs.length ? (t.seconds * 1e6).toFixed(2) + " us" : "-"),
      card("GFLOP", (t.flops / 1e9).toFixed(3)),
      card("peak tile memory of " + bytes(tg.bytes_per_tile), bytes(t.peakTile)),
      card("memory, all tiles", bytes(t.totalMemory)),
      card("steps", fmt(t.steps)),
    ]));
    var passes = R.compile.passes.map(function (p) { return {pass: p[0], seconds: p[1]}; });
    if (passes.length) {
      host.appendChild(el("h2", {text: "Compile passes"}));
      makeTable(host, "passes", [{key: "pass", label: "pass", text: true}, {key: "seconds", label: "seconds", fmt: function (v) { return v.toFixed(4); }}],
        passes, {filter: false});
    }
  }

  // -- chip floor plan --------------------------------------------------------------------------------
  function viewChip(host) {
    var tg = R.target, perIpu = tg.tiles_per_ipu, cols = Math.min(perIpu, 64), rows = Math.ceil(perIpu / cols);
    var CELL = Math.max(8, Math.min(28, Math.floor(640 / cols)));
    var mem = tileMemory(R), tc = R.tile_cycles, named = R.memory.named, cats = R.memory.categories;
    var select = el("select", {id: "chip-colour"});
    select.appendChild(el("option", {value: "memory", text: "memory (peak bytes per tile)"}));
    tc.steps.forEach(function (s, i) {
      select.appendChild(el("option", {value: "step:" + i, text: "cycles of step " + s + ": " + R.steps[s].name}));
    });
    var legend = el("span", {cls: "note", id: "chip-legend"});
    host.appendChild(el("div", {cls: "controls"}, [el("label", {text: "colour by "}), select, legend]));
    var reps = Math.min(R.replication_factor, 4);
    var floor = el("div", {cls: "floor"});
    var canvases = [];
    for (var r = 0; r < reps; r++) for (var ipu = 0; ipu < tg.num_ipus; ipu++) {
      var c = el("canvas", {width: cols * CELL, height: rows * CELL, "data-ipu": ipu, "data-replica": r, cls: "tiles"});
      canvases.push(c);
      floor.appendChild(el("figure", null, [c, el("figcaption", {text: "replica " + r + ", IPU " + ipu + " (tiles " +
        (ipu * perIpu) + ".." + ((ipu + 1) * perIpu - 1) + ")"})]));
    }
    host.appendChild(floor);
    host.appendChild(el("p", {cls: "note", text: tg.num_tiles + " tiles per replica, " + cols + " to a row; " +
      (R.replication_factor > 1 ? R.replication_factor + " replicas run the same program and hold the same layout" +
        (R.replication_factor > reps ? " (the first " + reps + " drawn)" : "") + "; " : "") +
      "red outline: over the " + fmt(tg.bytes_per_tile) + " B a tile holds. Hover a tile for its categories and largest variables."}));

    var values = mem, mode = "memory";
    function draw() {
      var hi = Math.max(1, maxOf(values)), lo = minOf(values);  // (no Function.apply: 100k tiles)
      canvases.forEach(function (c) {
        var ctx = c.getContext("2d"), ipu = +c.getAttribute("data-ipu");
        ctx.fillStyle = "#fff";
        ctx.fillRect(0, 0, c.width, c.height);
        for (var i = 0; i < perIpu; i++) {
          var t = ipu * perIpu + i, x = (i % cols) * CELL, y = Math.floor(i / cols) * CELL;
          ctx.fillStyle = values[t] ? ramp(values[t] / hi) : "#e5e8e8";
          ctx.fillRect(x, y, CELL - 1, CELL - 1);
          if (mode === "memory" && mem[t] > tg.bytes_per_tile) {
            ctx.strokeStyle = "#e00";
            ctx.strokeRect(x + 0.5, y + 0.5, CELL - 2, CELL - 2);
          }
        }
      });
      legend.textContent = "from " + fmt(lo) + " to " + fmt(hi) + (mode === "memory" ? " B" : " cycles");
    }
    select.addEventListener("change", function () {
      mode = select.value;
      values = mode === "memory" ? mem : tc.cycles[+mode.split(":")[1]];
      draw();
    });
    function tileText(t) {
      var lines = ["tile " + t + " (IPU " + Math.floor(t / perIpu) + ")", "memory " + fmt(mem[t]) + " B of " + fmt(tg.bytes_per_tile)];
      Object.keys(cats).forEach(function (k) { if (cats[k][t]) lines.push("  " + k + ": " + fmt(cats[k][t]) + " B"); });
      var top = named.tile_top[t] || [];
      if (top.length) lines.push("largest variables:");
      top.forEach(function (p) { var v = named.list[p[0]]; lines.push("  " + v.name + " " + JSON.stringify(v.shape) + " " + v.dtype + ": " + fmt(p[1]) + " B"); });
      if (mode !== "memory") lines.push("cycles of this step: " + fmt(values[t]));
      return lines.join("\n");
    }
    canvases.forEach(function (c) {
      c.addEventListener("mousemove", function (ev) {
        var box = c.getBoundingClientRect(), col = Math.floor((ev.clientX - box.left) / CELL), row = Math.floor((ev.clientY - box.top) / CELL);
        var i = row * cols + col;
        if (col < 0 || col >= cols || i < 0 || i >= perIpu) { hideTip(); return; }
        showTip(ev, tileText(+c.getAttribute("data-ipu") * perIpu + i));
      });
      c.addEventListener("mouseleave", hideTip);
    });
    draw();
  }

  // -- memory ---------------------------------------------------------------------------------------------
  function viewMemory(host) {
    var cats = totals(R).cats, all = sum(Object.values(cats)) || 1;
    host.appendChild(el("h2", {text: "By category (all tiles)"}));
    var rows = Object.keys(cats).map(function (k, i) {
      return {category: k, bytes: cats[k], share: cats[k] / all, color: CAT_COLORS[i % CAT_COLORS.length]};
    });
    makeTable(host, "categories", [
      {key: "category", label: "category", text: true}, {key: "bytes", label: "bytes"},
      {key: "share", label: "share", fmt: function (v) { return pct(v); }},
    ], rows, {filter: false, sortKey: "bytes"});
    var bar = el("div", {cls: "note"});
    rows.forEach(function (r) {
      bar.appendChild(el("span", {cls: "bar", style: "width:" + Math.max(1, 600 * r.share) + "px;background:" + r.color, title: r.category + " " + fmt(r.bytes) + " B"}));
    });
    host.appendChild(bar);

    opMemory(host);

    var named = R.memory.named;
    host.appendChild(el("h2", {text: "Largest variables"}));
    host.appendChild(el("p", {cls: "note", text: named.list.length + " of " + fmt(named.count) + " variables listed: the largest overall and the largest on each tile."}));
    var vars = named.list.map(function (v, i) {
      return {i: i, name: v.name, shape: JSON.stringify(v.shape), dtype: v.dtype, bytes: v.bytes, tiles: v.tiles,
              live: v.constant ? "constant" : (v.always_live ? "always live" : "points " + v.first + ".." + v.last), source: v.source};
    });
    makeTable(host, "variables", [
      {key: "name", label: "variable", text: true}, {key: "shape", label: "shape", text: true}, {key: "dtype", label: "dtype", text: true},
      {key: "bytes", label: "bytes"}, {key: "tiles", label: "tiles"}, {key: "live", label: "liveness", text: true},
      {key: "source", label: "source", text: true, cls: "src"},
    ], vars, {sortKey: "bytes", limit: 300});

    host.appendChild(el("h2", {text: "Not-always-live bytes over the program"}));
    var live = R.memory.liveness.bytes, pts = R.memory.liveness.steps;
    var W = 900, H = 220, P = 60;
    var cv = el("canvas", {width: W, height: H, id: "liveness"});
    host.appendChild(cv);
    var top = Math.max(1, maxOf(live.concat([0]))), peak = R.memory.named.peak;
    var ctx = cv.getContext("2d");
    ctx.strokeStyle = "#888";
    ctx.beginPath(); ctx.moveTo(P, 0); ctx.lineTo(P, H - 20); ctx.lineTo(W, H - 20); ctx.stroke();
    ctx.fillStyle = "#555"; ctx.font = "10px sans-serif";
    ctx.fillText(bytes(top), 2, 12); ctx.fillText("0", 2, H - 22);
    if (live.length) {
      var dx = (W - P) / live.length;
      ctx.strokeStyle = "#1e8449"; ctx.lineWidth = 1.5; ctx.beginPath();
      live.forEach(function (v, i) {
        var y = (H - 20) - v / top * (H - 30);
        if (i === 0) ctx.moveTo(P, y); else ctx.lineTo(P + i * dx, y);
        ctx.lineTo(P + (i + 1) * dx, y);
      });
      ctx.stroke();
      if (peak.point >= 0) {
        ctx.fillStyle = "#c0392b";
        ctx.beginPath(); ctx.arc(P + (peak.point + 0.5) * dx, (H - 20) - peak.bytes / top * (H - 30), 4, 0, 7); ctx.fill();
      }
      cv.addEventListener("mousemove", function (ev) {
        var box = cv.getBoundingClientRect(), i = Math.floor((ev.clientX - box.left - P) / dx);
        if (i < 0 || i >= live.length) { hideTip(); return; }
        var s = pts[i] >= 0 ? R.steps[pts[i]] : null;
        showTip(ev, "program point " + i + "\n" + fmt(live[i]) + " B live\n" + (s ? "step " + s.index + ": " + s.name : "(control)"));
      });
      cv.addEventListener("mouseleave", hideTip);
    }
    host.appendChild(el("p", {cls: "note", text: live.length + " program points in program order; peak " + fmt(top) +
      " B over all tiles (red dot)" + (peak.point >= 0 ? " at point " + peak.point : "") + ", receive buffers included."}));
    host.appendChild(el("h2", {text: "Live at the peak"}));
    var contrib = peak.contributors.map(function (p) { var v = named.list[p[0]]; return {name: v.name, bytes: p[1], shape: JSON.stringify(v.shape), source: v.source}; });
    if (peak.receive_bytes > 0) {
      var rs = R.steps[peak.step];
      contrib.push({name: "(receive buffers of step " + peak.step + ": " + rs.name + ")", bytes: peak.receive_bytes, shape: "", source: rs.source});
    }
    makeTable(host, "peak", [
      {key: "name", label: "variable", text: true}, {key: "shape", label: "shape", text: true}, {key: "bytes", label: "bytes"},
      {key: "source", label: "source", text: true, cls: "src"},
    ], contrib, {sortKey: "bytes", filter: false});
  }

  // -- memory by op: the vertex state of each op's steps (step_memory), grouped by the step's op --------
  function opRows(d) {
    var by = {}, all = 0;
    (d.step_memory || []).forEach(function (p) {
      var s = d.steps[p[0]], k = s.op || s.kind;
      var o = by[k] = by[k] || {op: k, steps: 0, bytes: 0, largest: "", largestBytes: -1, list: []};
      o.steps += 1; o.bytes += p[1]; all += p[1];
      o.list.push([s.index, s.name, p[1]]);
      if (p[1] > o.largestBytes) { o.largestBytes = p[1]; o.largest = s.name; }
    });
    return Object.keys(by).map(function (k) { var o = by[k]; o.share = all ? o.bytes / all : 0; return o; });
  }
  function viewOpMemoryTip(o) {
    var lines = [o.op + ": " + fmt(o.bytes) + " B of vertex state in " + o.steps + " step(s)"];
    o.list.slice().sort(function (a, b) { return b[2] - a[2]; }).slice(0, 12).forEach(function (x) {
      lines.push("  step " + x[0] + ": " + x[1] + ", " + fmt(x[2]) + " B");
    });
    if (o.list.length > 12) lines.push("  ... " + (o.list.length - 12) + " more");
    return lines.join("\n");
  }
  function opMemory(host) {
    var rows = opRows(R);
    host.appendChild(el("h2", {text: "By op (vertex state)"}));
    host.appendChild(el("p", {cls: "note", id: "op-memory-note", text: rows.length + " ops; the memory their steps' vertices " +
      "hold (the vertex-state category), summed over each op's steps. Hover a row for its steps."}));
    makeTable(host, "op-memory", [
      {key: "op", label: "op", text: true}, {key: "steps", label: "steps"}, {key: "bytes", label: "vertex state B"},
      {key: "share", label: "share", fmt: function (v) { return pct(v); }}, {key: "largest", label: "largest step", text: true},
    ], rows, {sortKey: "bytes", limit: 300, rowTip: viewOpMemoryTip});
  }

  // -- execution: timeline ------------------------------------------------------------------------------
  function viewExecution(host) {
    var tg = R.target, trace = R.execution.trace, steps = R.steps;
    host.appendChild(el("h2", {text: "Timeline"}));
    var segs = [];  // [start, end, phase, step]
    trace.forEach(function (e) {
      var s = steps[e[0]], at = e[1];
      [["sync", s.sync_cycles], ["exchange", s.exchange_cycles], ["compute", s.compute_cycles]].forEach(function (p) {
        var c = p[1] * e[2];
        if (c > 0) { segs.push([at, at + c, p[0], e[0]]); at += c; }
      });
    });
    var end = segs.length ? segs[segs.length - 1][1] : 1;
    segs.forEach(function (s) { if (s[1] > end) end = s[1]; });
    var W = 1000, TRACK = 26, TOP = 22, H = TOP + tg.num_ipus * TRACK + 8, LEFT = 56;
    var cv = el("canvas", {width: W, height: H, id: "timeline"});
    var view = {lo: 0, hi: end};
    var range = el("span", {cls: "note", id: "timeline-range"});
    function zoom(f, at) {
      var span = view.hi - view.lo, c = at === undefined ? view.lo + span / 2 : at;
      var ns = Math.max(10, Math.min(end, span * f));
      view.lo = Math.max(0, c - (c - view.lo) * ns / span); view.hi = Math.min(end, view.lo + ns);
      view.lo = Math.max(0, view.hi - ns);
      draw();
    }
    var ctl = el("div", {cls: "controls"}, [
      el("button", {text: "zoom in", id: "zoom-in", onclick: function () { zoom(0.5); }}),
      el("button", {text: "zoom out", id: "zoom-out", onclick: function () { zoom(2); }}),
      el("button", {text: "reset", id: "zoom-reset", onclick: function () { view.lo = 0; view.hi = end; draw(); }}),
      range,
      el("span", {cls: "legend note"}, [el("span", {cls: "sw", style: "background:" + PHASE.sync}), "sync",
        el("span", {cls: "sw", style: "background:" + PHASE.exchange}), "exchange", el("span", {cls: "sw", style: "background:" + PHASE.compute}), "compute"]),
    ]);
    host.appendChild(ctl);
    host.appendChild(cv);
    host.appendChild(el("p", {cls: "note", text: "Wheel to zoom at the pointer, drag to pan. Steps run in lockstep on every IPU of a replica (BSP). " +
      trace.length + " trace entries" + (R.execution.trace_dropped ? ", " + fmt(R.execution.trace_dropped) + " dropped (the trace keeps the first entries)" : "") + "."}));
    var ctx = cv.getContext("2d");
    function xOf(c) { return LEFT + (c - view.lo) / (view.hi - view.lo) * (W - LEFT - 4); }
    function draw() {
      ctx.clearRect(0, 0, W, H);
      ctx.fillStyle = "#555"; ctx.font = "10px sans-serif";
      ctx.fillText(fmt(Math.round(view.lo)), LEFT, 12);
      var hiText = fmt(Math.round(view.hi)) + " cycles";
      ctx.fillText(hiText, W - 8 - ctx.measureText(hiText).width, 12);
      for (var ipu = 0; ipu < tg.num_ipus; ipu++) {
        var y = TOP + ipu * TRACK;
        ctx.fillStyle = "#333"; ctx.fillText("IPU " + ipu, 4, y + 15);
        ctx.fillStyle = "#f2f4f4"; ctx.fillRect(LEFT, y, W - LEFT - 4, TRACK - 4);
        segs.forEach(function (s) {
          if (s[1] < view.lo || s[0] > view.hi) return;
          var x0 = Math.max(LEFT, xOf(s[0])), x1 = Math.min(W - 4, xOf(s[1]));
          ctx.fillStyle = PHASE[s[2]];
          ctx.fillRect(x0, y, Math.max(0.5, x1 - x0), TRACK - 4);
        });
      }
      range.textContent = "cycles " + fmt(Math.round(view.lo)) + " to " + fmt(Math.round(view.hi)) + " of " + fmt(end);
      cv.setAttribute("data-lo", String(view.lo)); cv.setAttribute("data-hi", String(view.hi));
    }
    cv.addEventListener("wheel", function (ev) {
      ev.preventDefault();
      var box = cv.getBoundingClientRect(), at = view.lo + (ev.clientX - box.left - LEFT) / (W - LEFT - 4) * (view.hi - view.lo);
      zoom(ev.deltaY < 0 ? 0.8 : 1.25, Math.max(0, Math.min(end, at)));
    }, {passive: false});
    var drag = null;
    cv.addEventListener("mousedown", function (ev) { drag = {x: ev.clientX, lo: view.lo, hi: view.hi}; });
    window.addEventListener("mouseup", function () { drag = null; });
    cv.addEventListener("mousemove", function (ev) {
      var box = cv.getBoundingClientRect();
      if (drag) {
        var shift = (drag.x - ev.clientX) / (W - LEFT - 4) * (drag.hi - drag.lo);
        shift = Math.max(-drag.lo, Math.min(end - drag.hi, shift));
        view.lo = drag.lo + shift; view.hi = drag.hi + shift; draw(); return;
      }
      var c = view.lo + (ev.clientX - box.left - LEFT) / (W - LEFT - 4) * (view.hi - view.lo);
      var hit = null;
      for (var i = 0; i < segs.length; i++) if (segs[i][0] <= c && c < segs[i][1]) { hit = segs[i]; break; }
      if (!hit || ev.clientY - box.top < TOP) { hideTip(); return; }
      var s = steps[hit[3]];
      showTip(ev, hit[2] + ": " + s.name + "\nstep " + s.index + " (" + s.kind + ")\ncycles " + fmt(hit[0]) + " to " + fmt(hit[1]) +
        " (" + fmt(hit[1] - hit[0]) + ")\n" + s.source);
    });
    cv.addEventListener("mouseleave", hideTip);
    draw();

    host.appendChild(el("h2", {text: "Program tree"}));
    treeView(host);
    host.appendChild(el("h2", {text: "Operations"}));
    host.appendChild(el("p", {cls: "note", text: "One row per program step. Efficiency: the step's FLOPs over what the chip's AMP units could do in its cycles (fp16 and fp32 peaks: " +
      fmt((tg.peak_flops_per_cycle || {}).fp16) + " and " + fmt((tg.peak_flops_per_cycle || {}).fp32) + " FLOPs a cycle over all tiles). Vertex state: the step's vertices' memory."}));
    makeTable(host, "operations", [
      {key: "index", label: "#"}, {key: "name", label: "step", text: true}, {key: "op", label: "op", text: true},
      {key: "kind", label: "kind", text: true}, {key: "runs", label: "runs"}, {key: "cycles", label: "cycles"},
      {key: "total", label: "total cycles", title: "cycles x runs"}, {key: "compute", label: "compute"},
      {key: "exchange", label: "exchange"}, {key: "sync", label: "sync"}, {key: "flops", label: "FLOPs"},
      {key: "eff16", label: "eff. fp16", fmt: function (v) { return v ? pct(v) : ""; }},
      {key: "eff32", label: "eff. fp32", fmt: function (v) { return v ? pct(v) : ""; }},
      {key: "bytes", label: "bytes exch."}, {key: "state", label: "vertex state B"},
      {key: "source", label: "source", text: true, cls: "src"},
    ], stepRows(R), {sortKey: "total"});
  }

  function treeView(host) {
    var prog = R.program, steps = R.steps, fns = {};
    prog.functions.forEach(function (p) { fns[p[0]] = p[1]; });
    var box = el("div", {cls: "tree", id: "program-tree"});
    var budget = {n: 4000};
    function label(n, leaf) {
      var s = n.s >= 0 ? steps[n.s] : null;
      var text = leaf && s ? s.name : n.k + (n.n !== undefined ? " x" + n.n : "") + (n.f !== undefined ? " function " + n.f : "") +
        (s && n.k !== "repeat" ? ": " + s.name : (n.name ? ": " + n.name : ""));
      return [text, s ? "  " + fmt(s.cycles) + " cycles x " + fmt(s.count) + " runs" : ""];
    }
    function node(n, parent, depth) {
      if (budget.n-- <= 0) return;
      var kids = n.c || [];
      if (n.f !== undefined && fns[n.f] && depth < 12) kids = [fns[n.f]];
      var l = label(n, !kids.length);
      if (!kids.length) {
        parent.appendChild(el("div", {cls: "leaf"}, [l[0], el("span", {cls: "cyc", text: l[1]})]));
        return;
      }
      var d = el("details", {cls: "node"}, [el("summary", null, [l[0] + " (" + kids.length + ")", el("span", {cls: "cyc", text: l[1]})])]);
      if (depth < 2) d.open = true;
      parent.appendChild(d);
      kids.forEach(function (k) { node(k, d, depth + 1); });
    }
    prog.programs.forEach(function (p, i) {
      var ran = R.execution.runs.some(function (r) { return r.program === i; });
      var d = el("details", {cls: "node"}, [el("summary", {text: "program " + i + (ran ? "" : " (not run)")})]);
      d.open = i === prog.programs.length - 1;  // the last program is the model's step in frontends
      box.appendChild(d);
      node(p, d, 0);
    });
    if (prog.truncated || budget.n < 0) box.appendChild(el("div", {cls: "note", text: "(tree truncated)"}));
    host.appendChild(box);
  }

  // -- compare ----------------------------------------------------------------------------------------------
  function delta(a, b, lowerIsBetter) {
    if (a === b) return {text: "=", cls: ""};
    var d = b - a, rel = a ? d / a : 0;
    var better = lowerIsBetter ? d < 0 : d > 0;
    return {text: (d > 0 ? "+" : "") + fmt(d) + (a ? " (" + (rel > 0 ? "+" : "") + pct(rel) + ")" : ""), cls: better ? "better" : "worse"};
  }
  function viewCompare(host) {
    var ta = totals(R), tb = totals(B);
    host.appendChild(el("p", {cls: "note", text: "A: this report, on " + R.target.name + ".   B: the other, on " + B.target.name +
      ". Differences are B - A; green where B is better (fewer cycles, less memory), red where worse."}));
    var rows = [["cycles", ta.cycles, tb.cycles, true], ["time (us, at each chip's clock)", ta.seconds * 1e6, tb.seconds * 1e6, true], ["peak tile memory (B)", ta.peakTile, tb.peakTile, true],
      ["memory, all tiles (B)", ta.totalMemory, tb.totalMemory, true], ["not-always-live peak (B)", ta.liveness, tb.liveness, true],
      ["FLOPs", ta.flops, tb.flops, false], ["steps", ta.steps, tb.steps, true], ["tiles", R.target.num_tiles, B.target.num_tiles, false]];
    Object.keys(Object.assign({}, ta.cats, tb.cats)).forEach(function (k) { rows.push(["  " + k + " (B)", ta.cats[k] || 0, tb.cats[k] || 0, true]); });
    var table = el("table", {cls: "grid", id: "compare-summary"}, [el("tr", null, ["figure", "A", "B", "B - A"].map(function (h, i) { return el("th", {text: h, cls: i ? "" : "t"}); }))]);
    rows.forEach(function (r) {
      var dd = delta(r[1], r[2], r[3]);
      table.appendChild(el("tr", {cls: dd.cls ? "hl" : ""}, [el("td", {cls: "t", text: r[0]}), el("td", {text: fmt(r[1])}), el("td", {text: fmt(r[2])}),
        el("td", {cls: dd.cls, text: dd.text})]));
    });
    var cols = el("div", {cls: "cols"});
    host.appendChild(el("h2", {text: "Side by side"}));
    host.appendChild(table);
    host.appendChild(el("h2", {text: "Steps by name (total cycles)"}));
    function byName(d) {
      var m = {};
      d.steps.forEach(function (s) { var k = s.name; m[k] = m[k] || {cycles: 0, runs: 0}; m[k].cycles += s.cycles * s.count; m[k].runs += s.count; });
      return m;
    }
    var a = byName(R), b = byName(B), names = Object.keys(Object.assign({}, a, b));
    var diff = names.map(function (n) {
      var x = a[n] ? a[n].cycles : 0, y = b[n] ? b[n].cycles : 0;
      return {name: n, a: x, b: y, d: y - x, ad: Math.abs(y - x), only: !a[n] ? "B only" : (!b[n] ? "A only" : ""), _hl: x !== y};
    });
    makeTable(cols, "compare-steps", [
      {key: "name", label: "step", text: true}, {key: "a", label: "A cycles"}, {key: "b", label: "B cycles"},
      {key: "d", label: "B - A", fmt: function (v) { return (v > 0 ? "+" : "") + fmt(v); }}, {key: "ad", label: "|B - A|"},
      {key: "only", label: "in", text: true},
    ], diff, {sortKey: "ad"});
    host.appendChild(cols);
  }

  // -- the page ----------------------------------------------------------------------------------------------
  function start() {
    tip = el("div", {id: "tooltip"});
    document.body.appendChild(tip);
    var views = [["summary", "Summary", viewSummary], ["chip", "Chip", viewChip], ["memory", "Memory", viewMemory],
      ["execution", "Execution", viewExecution]];
    if (B) views.push(["compare", "Compare", viewCompare]);
    var nav = document.getElementById("tabs"), main = document.getElementById("views");
    var built = {};
    function show(id) {
      views.forEach(function (v) {
        var sec = document.getElementById("view-" + v[0]);
        var on = v[0] === id;
        sec.classList.toggle("active", on);
        nav.querySelector("[data-view=" + v[0] + "]").classList.toggle("active", on);
        if (on && !built[id]) { built[id] = true; v[2](sec); }
      });
      if (history.replaceState) history.replaceState(null, "", "#" + id);
    }
    views.forEach(function (v) {
      nav.appendChild(el("button", {"data-view": v[0], text: v[1], onclick: function () { show(v[0]); }}));
      var sec = document.getElementById("view-" + v[0]) || main.appendChild(el("section", {id: "view-" + v[0], cls: "view"}));
      sec.classList.add("view");
    });
    var first = (location.hash || "").slice(1);
    show(views.some(function (v) { return v[0] === first; }) ? first : "summary");
    document.body.setAttribute("data-ready", "1");
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
