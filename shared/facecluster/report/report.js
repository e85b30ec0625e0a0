/* facecluster review page. Reads the JSON in #report-data, draws clusters lazily.
 * Everything from the data is written with textContent / title / dataset (never innerHTML),
 * and no URL is ever built from an image path: tiles show only the report's own sprite sheets. */
(function () {
  "use strict";
  var t0 = performance.now(), marks = [];
  function mark(name) { marks.push(name + ":" + Math.round(performance.now() - t0)); }
  var root = document.documentElement;
  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function fmt(n) { return Number(n).toLocaleString("en-US"); }
  function showError(msg) {
    var b = $("jserror");
    b.hidden = false;
    b.textContent = "The review page hit an error: " + msg;
    root.setAttribute("data-error", String(msg));
  }
  window.addEventListener("error", function (ev) { showError(ev.message || String(ev.error)); });

  var D;
  try { D = JSON.parse($("report-data").textContent); }

  catch (e) { showError("cannot read the report data: " + e.message); return; }

  // ------------------------------------------------------------------ data
  var N = D.paths.length, paths = D.paths, cid = D.cid, labels = D.labels, labelNames = D.labelNames || [];
  var S = D.sheet, T = S.size, P = S.pitch, COLS = S.cols, PER = S.per, SHEET_W = COLS * P;
  var GAP = 4;
  var zoom = 1;
  root.style.setProperty("--t", T + "px");
  var pos = new Int32Array(N).fill(-1);
  for (var k = 0; k < D.order.length; k++) pos[D.order[k]] = k;
  var errOf = new Map(D.errors), thumbErrOf = new Map(D.thumbErrors);
  var noFaceOf = new Uint8Array(N);
  (D.noFace || []).forEach(function (i) { noFaceOf[i] = 1; });

  // Cluster id -> record indices, in the page order chosen by the writer (D.order lists every record).
  var groups = new Map();
  var failed = [];
  for (var k2 = 0; k2 < D.order.length; k2++) {
    var i = D.order[k2], c = cid[i];
    if (c < 0) { failed.push(i); continue; }
    var g = groups.get(c);
    if (!g) groups.set(c, g = []);
    g.push(i);
  }
  var multi = [], singles = [];
  groups.forEach(function (m, c) { (m.length > 1 ? multi : singles).push(c); });
  multi.sort(function (a, b) { return groups.get(b).length - groups.get(a).length || a - b; });
  singles.sort(function (a, b) { return pos[groups.get(a)[0]] - pos[groups.get(b)[0]]; });

  mark("data");
  // Majority identity per cluster (only with ground truth labels).
  var majority = new Map();
  if (labels) {
    multi.forEach(function (c) {
      var cnt = new Map(), best = -1, bestN = 0;
      groups.get(c).forEach(function (i) {
        var l = labels[i]; if (l < 0) return;
        var v = (cnt.get(l) || 0) + 1; cnt.set(l, v);
        if (v > bestN || (v === bestN && l < best)) { best = l; bestN = v; }
      });
      var known = 0; cnt.forEach(function (v) { known += v; });
      majority.set(c, { label: best, n: bestN, known: known, kinds: cnt.size });
    });
  }

  // ------------------------------------------------------------------ header
  $("title").textContent = "Cluster review: " + (D.title || "");
  var counts = $("counts");
  function countItem(id, value, text, cls) {
    var li = el("li", cls);
    var b = el("b", null, fmt(value));
    b.id = "n-" + id;
    b.setAttribute("data-value", String(value));
    li.appendChild(b);
    li.appendChild(document.createTextNode(text));
    counts.appendChild(li);
  }
  countItem("faces", N - failed.length, " faces");
  countItem("clusters", groups.size, " clusters");
  countItem("multi", multi.length, " with 2+ faces");
  countItem("singletons", singles.length, " singletons");
  if (D.noFace && D.noFace.length) countItem("no-face", D.noFace.length, " with no face (apart from every face)");
  countItem("failures", failed.length, " failed", failed.length ? "bad" : null);
  if (D.thumbErrors.length) countItem("thumb-errors", D.thumbErrors.length, " unreadable images", "bad");
  // Faces of the last `facecluster add` (green inner frame), when the page shows a collection.
  var addedOf = new Uint8Array(N);
  if (D.added) {
    D.added.forEach(function (i) { addedOf[i] = 1; });
    countItem("added", D.added.length, " added" + (D.addedLabel ? " in " + D.addedLabel : " in the last add"), "added");
  }

  var meta = $("meta");
  function metaItem(name, value) {
    var s = el("span"); s.appendChild(document.createTextNode(name + " "));
    s.appendChild(el("code", null, value)); meta.appendChild(s);
  }
  if (D.method) metaItem("method", D.method);
  if (D.settings) {
    Object.keys(D.settings).sort().forEach(function (k) {
      var v = D.settings[k];
      metaItem(k, typeof v === "string" ? v : JSON.stringify(v));
    });
  }
  metaItem("records", fmt(N));
  if (D.version) metaItem("facecluster", D.version);

  var quality = $("quality");
  // Each quality box is a <details open> so a reviewer can fold the tables away.
  function qbox(id, cls, title) {
    var d = el("details", cls); d.id = id; d.open = true;
    var sm = el("summary"); sm.appendChild(el("h2", null, title)); d.appendChild(sm);
    return d;
  }
  if (D.metrics) {
    var box = qbox("metrics", null, "Metrics");
    var tb = el("table");
    Object.keys(D.metrics).forEach(function (k) {
      var v = D.metrics[k], tr = el("tr");
      tr.appendChild(el("th", null, k.replace(/_/g, " ")));
      // counts (n, n_clusters, ...) as integers, scores with 4 decimals (JSON turns 1.0 into 1)
      var td = el("td", "num", typeof v === "number" ? (/^n(_|$)/.test(k) ? fmt(v) : v.toFixed(4)) : (typeof v === "object" ? JSON.stringify(v) : v));
      td.setAttribute("data-key", k);
      tr.appendChild(td); tb.appendChild(tr);
    });
    box.appendChild(tb); quality.appendChild(box);
  }
  function jumpLink(c, text) {
    var a = el("a", "cid", text || ("#" + c));
    a.href = "#c-" + c;
    a.setAttribute("data-jump", String(c));
    return a;
  }
  if (D.worst) {
    var wm = qbox("worst-merges", "worst", "Worst merges (" + fmt(D.worst.n_merged_clusters) + (D.worst.n_merged_clusters === 1 ? " cluster holds" : " clusters hold") + " several identities)");
    var t1 = el("table"), h1 = el("tr");
    ["cluster", "faces", "wrong", "identities (faces)"].forEach(function (h, j) { h1.appendChild(el("th", j && j < 3 ? "num" : null, h)); });
    t1.appendChild(h1);
    D.worst.merges.forEach(function (m) {
      var tr = el("tr"), td = el("td"); td.appendChild(jumpLink(m.cluster)); tr.appendChild(td);
      tr.appendChild(el("td", "num", fmt(m.size)));
      tr.appendChild(el("td", "num", fmt(m.wrong)));
      tr.appendChild(el("td", "lst", m.labels.map(function (p) { return p[0] + " " + p[1]; }).join(" · ") +
        (m.n_labels > m.labels.length ? " · +" + (m.n_labels - m.labels.length) + " more" : "")));
      t1.appendChild(tr);
    });
    if (!D.worst.merges.length) { var r0 = el("tr"); r0.appendChild(el("td", null, "none")); t1.appendChild(r0); }
    wm.appendChild(t1); quality.appendChild(wm);

    var ws = qbox("worst-splits", "worst", "Worst splits (" + fmt(D.worst.n_split_labels) + (D.worst.n_split_labels === 1 ? " identity" : " identities") + " over several clusters)");
    var t2 = el("table"), h2 = el("tr");
    ["identity", "faces", "outside", "clusters (faces)"].forEach(function (h, j) { h2.appendChild(el("th", j && j < 3 ? "num" : null, h)); });
    t2.appendChild(h2);
    D.worst.splits.forEach(function (s) {
      var tr = el("tr");
      tr.appendChild(el("td", null, s.label));
      tr.appendChild(el("td", "num", fmt(s.faces)));
      tr.appendChild(el("td", "num", fmt(s.outside)));
      var td = el("td", "lst");
      s.clusters.forEach(function (p, j) {
        if (j) td.appendChild(document.createTextNode(" · "));
        td.appendChild(jumpLink(p[0]));
        td.appendChild(document.createTextNode(" " + p[1]));
      });
      if (s.n_clusters > s.clusters.length) td.appendChild(document.createTextNode(" · +" + (s.n_clusters - s.clusters.length) + " more"));
      tr.appendChild(td); t2.appendChild(tr);
    });
    if (!D.worst.splits.length) { var r1 = el("tr"); r1.appendChild(el("td", null, "none")); t2.appendChild(r1); }
    ws.appendChild(t2); quality.appendChild(ws);
    var lg = el("div", "legend");
    lg.appendChild(document.createTextNode("Red outline: face whose label differs from its cluster's majority."));
    quality.appendChild(lg);
  }

  // ------------------------------------------------------------------ sprite sheets (lazy)
  var styleSheet = document.styleSheets[0];
  var sheetLoaded = new Uint8Array(S.n);
  function cssUrl(u) { return 'url("' + u.replace(/["\\\n\r]/g, function (ch) { return "\\" + ch.charCodeAt(0).toString(16) + " "; }) + '")'; }
  function ensureSheet(s) {
    if (sheetLoaded[s]) return;
    sheetLoaded[s] = 1;
    var url;
    if (S.mode === "inline") {
      var holder = $("sheet-" + s);
      url = "data:image/jpeg;base64," + (holder ? holder.textContent.trim() : "");
    } else {
      url = S.urls[s];
      // CSS backgrounds fail silently: probe the file so a page copied without its
      // thumbnail folder says so instead of showing grey squares.
      var probe = new Image();
      probe.onerror = function () {
        var n = (+root.getAttribute("data-sheets-failed") || 0) + 1;
        root.setAttribute("data-sheets-failed", String(n));
        var w = $("sheetwarn");
        w.hidden = false;
        w.textContent = "Thumbnails missing: keep the folder " + S.urls[0].split("/")[0] + "/ next to this page (" + n + " sprite sheet" + (n > 1 ? "s" : "") + " could not be read).";
      };
      probe.src = url;
    }
    styleSheet.insertRule(".s" + s + "{background-image:" + cssUrl(url) + ";background-size:calc(var(--z) * " + SHEET_W + "px) auto}",
      styleSheet.cssRules.length);
    root.setAttribute("data-sheets-loaded", String((+root.getAttribute("data-sheets-loaded") || 0) + 1));
  }
  // Cell offsets as classes (x0..x15, y0..y15) rather than an inline style per tile: tiles
  // then differ only in class names, so the browser shares their computed styles.
  for (var q = 0; q < COLS; q++) {
    styleSheet.insertRule(".x" + q + "{background-position-x:calc(var(--z) * " + (-q * P) + "px)}", styleSheet.cssRules.length);
    styleSheet.insertRule(".y" + q + "{background-position-y:calc(var(--z) * " + (-q * P) + "px)}", styleSheet.cssRules.length);
  }
  var hits = null;  // Uint8Array of query matches, or null when no filter
  function tile(i, cls) {
    var t = document.createElement("i");
    var p = pos[i], s = (p / PER) | 0, cell = p % PER;
    t.className = "t s" + s + " x" + (cell % COLS) + " y" + ((cell / COLS) | 0) + (cls || "") +
      (thumbErrOf.has(i) ? " bad" : "") + (hits && hits[i] ? " hit" : "") + (addedOf[i] ? " new" : "");
    t.setAttribute("data-i", String(i));
    t.title = "#" + cid[i] + "  " + paths[i] + (labels && labels[i] >= 0 ? "\n" + labelNames[labels[i]] : "") +
      (addedOf[i] ? "\nadded in the last add" : "");
    ensureSheet(s);
    return t;
  }

  // ------------------------------------------------------------------ layout
  var clustersEl = $("clusters"), singlesEl = $("singletons"), failEl = $("failures");
  var perRow = 1, blockSize = 1;
  function tilePx() { return T * zoom; }
  function gridHeight(n) { var rows = Math.ceil(n / perRow); return rows ? rows * tilePx() + (rows - 1) * GAP : 0; }
  function measure() {
    var w = clustersEl.clientWidth - 18;  // section padding + border
    perRow = Math.max(1, Math.floor((w + GAP) / (tilePx() + GAP)));
    // A cluster body is cut into blocks of whole rows, each filled on its own, so a
    // 2,000-face cluster creates only the tiles near the screen.
    blockSize = perRow * 12;
  }

  var io = new IntersectionObserver(function (entries) {
    for (var j = 0; j < entries.length; j++) if (entries[j].isIntersecting) fill(entries[j].target);
  }, { rootMargin: "1200px 0px" });

  function fill(g) {
    if (g._filled) return;
    g._filled = true;
    io.unobserve(g);
    var f = document.createDocumentFragment(), m = g._members, maj = g._maj;
    for (var j = 0; j < m.length; j++) {
      var i = m[j];
      f.appendChild(tile(i, maj !== undefined && labels[i] >= 0 && labels[i] !== maj ? " odd" : ""));
    }
    g.appendChild(f);
    g.style.height = "";
  }
  function makeGrid(members, maj) {
    var g = el("div", "g");
    g._members = members; g._maj = maj; g._filled = false;
    g.style.height = gridHeight(members.length) + "px";
    io.observe(g);
    return g;
  }
  // (Re)build a body: placeholder blocks of exact height for body._members.
  function buildBody(body) {
    for (var b = body.firstChild; b; b = b.nextSibling) io.unobserve(b);
    body.textContent = "";
    var m = body._members, f = document.createDocumentFragment();
    for (var j = 0; j < m.length; j += blockSize) f.appendChild(makeGrid(m.length > blockSize ? m.slice(j, j + blockSize) : m, body._maj));
    body.appendChild(f);
  }
  function makeBody(members, maj) {
    var body = el("div", "body");
    body._members = members; body._maj = maj;
    buildBody(body);
    return body;
  }
  function forTiles(body, fn) {
    for (var b = body.firstChild; b; b = b.nextSibling) if (b._filled) for (var t = b.firstChild; t; t = t.nextSibling) fn(t);
  }

  mark("header");
  // Cluster rows: header now, tiles when near the viewport.
  measure();
  var rowOf = new Map(), bodyOf = new Map();
  var frag = document.createDocumentFragment();
  multi.forEach(function (c) {
    var m = groups.get(c), mj = majority.get(c);
    var sec = el("section", "cl");
    sec.id = "c-" + c;
    sec.setAttribute("data-cid", String(c));
    var h = el("h3");
    h.appendChild(jumpLink(c));
    h.appendChild(el("span", "n", fmt(m.length) + " faces"));
    if (mj && mj.label >= 0) {
      var pct = Math.round(100 * mj.n / mj.known);
      h.appendChild(el("span", "maj", labelNames[mj.label] + " " + pct + "%" + (mj.kinds > 1 ? " · " + (mj.kinds - 1) + " other identit" + (mj.kinds > 2 ? "ies" : "y") : "")));
      if (mj.kinds > 1) sec.classList.add("impure");
    }
    sec.appendChild(h);
    var body = makeBody(m, mj && mj.label >= 0 ? mj.label : undefined);
    sec.appendChild(body);
    frag.appendChild(sec);
    rowOf.set(c, sec); bodyOf.set(c, body);
  });
  if (!multi.length) frag.appendChild(el("p", "note", "No cluster has more than one face."));
  clustersEl.appendChild(frag);
  root.setAttribute("data-rows", String(multi.length));

  // Singletons: one section, one body (blocks fill on their own like cluster rows).
  var singleList = singles;
  var singlesHead = el("h2"), singlesBody = el("div", "body");
  singlesEl.appendChild(singlesHead); singlesEl.appendChild(singlesBody);
  function buildSingles() {
    singlesHead.textContent = "Singletons: " + fmt(singleList.length) + (hits ? " matching" : "") + (singleList.length === 1 ? " face" : " faces") + " seen once" +
      (labels && !hits ? " (sorted by label)" : "");
    singlesEl.hidden = singleList.length === 0;
    singlesBody._members = singleList.map(function (c) { return groups.get(c)[0]; });
    buildBody(singlesBody);
  }
  buildSingles();

  // Failed records: a table (text only), a thumbnail when the image itself decoded.
  var failList = failed, failShown = 500;
  function buildFailures() {
    failEl.textContent = "";
    failEl.hidden = failList.length === 0;
    if (!failList.length) return;
    failEl.appendChild(el("h2", null, "Failed records: " + fmt(failList.length) + (hits ? " matching" : "")));
    var tb = el("table"), hr = el("tr");
    ["record", "", "path", "error"].forEach(function (h) { hr.appendChild(el("th", null, h)); });
    tb.appendChild(hr);
    failList.slice(0, failShown).forEach(function (i) {
      var tr = el("tr");
      tr.setAttribute("data-i", String(i));
      tr.appendChild(el("td", "num", i));
      var tt = el("td");
      if (!thumbErrOf.has(i)) { var t = tile(i, ""); t.style.setProperty("--z", String(32 / T)); tt.appendChild(t); }
      tr.appendChild(tt);
      tr.appendChild(el("td", "path", paths[i]));
      tr.appendChild(el("td", "err", errOf.get(i)));
      tb.appendChild(tr);
    });
    failEl.appendChild(tb);
    if (failList.length > failShown) {
      var more = el("button", "more", "show all " + fmt(failList.length));
      more.type = "button";
      more.addEventListener("click", function () { failShown = Infinity; buildFailures(); });
      failEl.appendChild(more);
    }
  }
  buildFailures();

  // ------------------------------------------------------------------ filter and jump
  var status = $("status");
  var lower = null;
  function setStatus(text) { status.textContent = text; }
  function applyFilter(q, keepHash) {
    q = (q || "").trim();
    var m = /^(?:#|id:)\s*(\d+)$/i.exec(q), nh = 0;
    if (!q) {
      hits = null;
    } else {
      hits = new Uint8Array(N);
      if (m) {
        (groups.get(+m[1]) || []).forEach(function (i) { hits[i] = 1; nh++; });
      } else {
        if (!lower) lower = paths.map(function (p) { return p.toLowerCase(); });
        var ql = q.toLowerCase();
        for (var i = 0; i < N; i++) {
          if (lower[i].indexOf(ql) >= 0 || (cid[i] < 0 && String(errOf.get(i)).toLowerCase().indexOf(ql) >= 0)) { hits[i] = 1; nh++; }
        }
      }
    }
    var shown = 0;
    multi.forEach(function (c) {
      var mem = groups.get(c), any = !hits;
      if (hits) for (var j = 0; j < mem.length && !any; j++) if (hits[mem[j]]) any = true;
      rowOf.get(c).hidden = !any;
      if (any) shown++;
      forTiles(bodyOf.get(c), function (t) { t.classList.toggle("hit", !!(hits && hits[+t.getAttribute("data-i")])); });
    });
    singleList = hits ? singles.filter(function (c) { return hits[groups.get(c)[0]]; }) : singles;
    failList = hits ? failed.filter(function (i) { return hits[i]; }) : failed;
    buildSingles(); buildFailures();
    root.setAttribute("data-match-faces", hits ? String(nh) : "");
    root.setAttribute("data-match-rows", String(shown));
    setStatus(hits ? fmt(nh) + " matching records · " + fmt(shown) + " clusters · " + fmt(singleList.length) + " singletons" +
      (failList.length ? " · " + fmt(failList.length) + " failed" : "") : "");
    if (!keepHash) {
      try { history.replaceState(null, "", q ? "#q=" + encodeURIComponent(q) : location.pathname + location.search); } catch (e) { /* file: URLs in some browsers */ }
    }
  }
  var qEl = $("q"), qTimer = 0;
  qEl.addEventListener("input", function () {
    clearTimeout(qTimer);
    qTimer = setTimeout(function () { applyFilter(qEl.value); }, 200);
  });
  qEl.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter") { clearTimeout(qTimer); applyFilter(qEl.value); }
  });

  function flash(node) {
    node.classList.remove("flash");
    void node.offsetWidth;  // restart the animation
    node.classList.add("flash");
  }
  function jump(c) {
    if (!groups.has(c)) { setStatus("no cluster #" + c); return false; }
    var mem = groups.get(c);
    if (hits && !mem.some(function (i) { return hits[i]; })) { qEl.value = ""; applyFilter("", true); }
    var target;
    if (mem.length > 1) {
      target = rowOf.get(c);
      target.scrollIntoView({ block: "start" });
    } else {
      var k = singleList.indexOf(c), b = singlesBody.children[(k / blockSize) | 0];
      fill(b);
      target = b.children[k % blockSize];
      target.scrollIntoView({ block: "center" });
      select(mem[0], target);
    }
    flash(target);
    setStatus("cluster #" + c + " · " + fmt(mem.length) + (mem.length > 1 ? " faces" : " face"));
    root.setAttribute("data-jumped", String(c));
    return true;
  }
  $("jumpform").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var v = $("jump").value;
    if (v !== "" && jump(+v)) { try { history.replaceState(null, "", "#c-" + v); } catch (e) { /* ignore */ } }
  });
  document.addEventListener("click", function (ev) {
    var a = ev.target.closest ? ev.target.closest("a[data-jump]") : null;
    if (a) {
      ev.preventDefault();
      var c = +a.getAttribute("data-jump");
      jump(c);
      try { history.replaceState(null, "", "#c-" + c); } catch (e) { /* ignore */ }
      return;
    }
    var t = ev.target.closest ? ev.target.closest(".t[data-i]") : null;
    if (t && !t.classList.contains("big")) select(+t.getAttribute("data-i"), t);
  });

  // ------------------------------------------------------------------ detail panel
  var detail = $("detail"), selected = null;
  function select(i, node) {
    if (selected) selected.classList.remove("sel");
    selected = node || null;
    if (selected) selected.classList.add("sel");
    detail.textContent = "";
    var close = el("button", "close", "×");
    close.type = "button"; close.title = "close (Esc)";
    close.addEventListener("click", function () { detail.hidden = true; if (selected) selected.classList.remove("sel"); });
    detail.appendChild(close);
    if (pos[i] >= 0 && !thumbErrOf.has(i)) {
      var big = tile(i, " big");
      big.style.setProperty("--z", String(128 / T));
      big.removeAttribute("title");
      detail.appendChild(big);
    }
    var dl = el("dl");
    function row(k, v) { dl.appendChild(el("dt", null, k)); var dd = el("dd"); if (v instanceof Node) dd.appendChild(v); else dd.textContent = v; dl.appendChild(dd); return dd; }
    row("cluster", cid[i] >= 0 ? jumpLink(cid[i]) : "failed (-1)");
    if (cid[i] >= 0) row("size", fmt(groups.get(cid[i]).length));
    row("record", "#" + i + " in the output JSON");
    if (labels) row("label", labels[i] >= 0 ? labelNames[labels[i]] : "(none)");
    row("path", el("code", null, paths[i]));
    if (noFaceOf[i]) row("no face", "this crop holds no face (a detector's false positive?): a cluster of its own (with its copies)");
    if (errOf.has(i)) row("error", errOf.get(i));
    if (thumbErrOf.has(i)) row("image", thumbErrOf.get(i));
    detail.appendChild(dl);
    detail.hidden = false;
  }
  document.addEventListener("keydown", function (ev) {
    if (ev.key === "Escape") { detail.hidden = true; if (selected) selected.classList.remove("sel"); }
    else if (ev.key === "/" && document.activeElement !== qEl && !(document.activeElement && /INPUT|SELECT/.test(document.activeElement.tagName))) { ev.preventDefault(); qEl.focus(); }
  });

  // ------------------------------------------------------------------ zoom and resize
  function relayout(change) {
    // keep the first cluster on screen where it is while rows above change height
    // (found before the change: a new zoom resizes filled rows at once)
    var anchor = null, off = 0, secs = document.querySelectorAll("section.cl:not([hidden]), #singletons, #failures");
    var barBottom = $("bar").getBoundingClientRect().bottom;
    for (var j = 0; j < secs.length; j++) {
      var r = secs[j].getBoundingClientRect();
      if (r.bottom > barBottom + 24) { anchor = secs[j]; off = r.top; break; }  // more than a sliver shows
    }
    if (change) change();
    measure();
    // block sizes follow perRow, and tile size changes with zoom: rebuild; the observer refills
    multi.forEach(function (c) { buildBody(bodyOf.get(c)); });
    buildSingles();
    if (anchor && window.scrollY > 0) window.scrollBy(0, anchor.getBoundingClientRect().top - off);
  }
  $("zoom").addEventListener("change", function () {
    var v = +this.value || 1;
    relayout(function () { zoom = v; root.style.setProperty("--z", String(zoom)); });
  });
  var rzTimer = 0;
  window.addEventListener("resize", function () { clearTimeout(rzTimer); rzTimer = setTimeout(relayout, 150); });

  // ------------------------------------------------------------------ start
  function fromHash() {
    var h = decodeURIComponent(location.hash.slice(1));
    var m = /^c-(\d+)$/.exec(h);
    if (m) { jump(+m[1]); return; }
    if (h.indexOf("q=") === 0) { qEl.value = h.slice(2); applyFilter(qEl.value, true); }
  }
  // Fill what is on the first screen right away (no blank first paint; the observer does the
  // rest). Read every position first, then write: one layout instead of one per block.
  function fillFirstScreen() {
    var limit = Math.max(window.innerHeight, 900) + 600;  // innerHeight can be 0 before the first frame
    var all = document.querySelectorAll("main .g"), todo = [];
    for (var j = 0; j < all.length; j++) {
      if (all[j].getBoundingClientRect().top > limit) break;
      todo.push(all[j]);
    }
    mark("layout");
    todo.forEach(fill);
  }
  mark("rows");
  fillFirstScreen();
  mark("first-screen");
  window.addEventListener("hashchange", fromHash);
  fromHash();
  root.setAttribute("data-build-ms", String(Math.round(performance.now() - t0)));
  root.setAttribute("data-timings", marks.join(" "));
  setTimeout(function () {
    root.setAttribute("data-ready", "1");
    root.setAttribute("data-tiles", String(document.querySelectorAll("main .t").length));
  }, 0);
})();
