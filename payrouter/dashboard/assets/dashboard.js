// payrouter dashboard: fetches /dashboard/data every few seconds and draws every panel as DOM
// tables and inline SVG. No libraries, no network beyond this origin. Values from the server are
// only ever set as text (never parsed as HTML): model names, payers and reasons are data.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = ["--c0", "--c1", "--c2", "--c3", "--c4", "--c5", "--c6", "--c7"].map(
    (v) => getComputedStyle(document.documentElement).getPropertyValue(v).trim() || "#888"
  );
  const body = document.body;
  const refreshMs = Math.max(1000, Number(body.dataset.refreshMs) || 5000);
  const WINDOW_NAMES = ["1h", "6h", "24h", "7d"];
  // the chosen window lives in the URL's fragment, so a reload or a bookmark keeps it
  let windowName = WINDOW_NAMES.includes(location.hash.slice(1)) ? location.hash.slice(1) : body.dataset.window || "6h";
  let decimals = 6;
  let timer = null;

  // ---- formatting -----------------------------------------------------------------------
  // Money arrives as integer strings of atomic units; BigInt keeps it exact at any size.
  function usd(atomic) {
    let n = BigInt(atomic || "0");
    const sign = n < 0n ? "-" : "";
    if (n < 0n) n = -n;
    const scale = 10n ** BigInt(decimals);
    const frac = (n % scale).toString().padStart(decimals, "0");
    return sign + "$" + (n / scale).toString() + (decimals ? "." + frac : "");
  }
  function usdNumber(atomic) {
    return Number(atomic || "0") / 10 ** decimals;
  }
  function shortUsd(value) {
    const abs = Math.abs(value);
    if (abs === 0) return "$0";
    if (abs >= 1000) return "$" + (value / 1000).toFixed(1) + "k";
    if (abs >= 1) return "$" + value.toFixed(2);
    return "$" + Number(value.toPrecision(3)).toString();
  }
  function ms(value) {
    return value === null || value === undefined ? "–" : value >= 1000 ? (value / 1000).toFixed(2) + " s" : value.toFixed(1) + " ms";
  }
  function count(value) {
    return Number(value || 0).toLocaleString("en-US");
  }
  function shortAddress(address) {
    return address && address.length > 14 ? address.slice(0, 8) + "…" + address.slice(-6) : address || "–";
  }
  function clock(t, withDate) {
    const d = new Date(t);
    const hm = d.toISOString().slice(11, 16);
    return withDate ? d.toISOString().slice(5, 10) + " " + hm : hm;
  }

  // ---- DOM helpers ----------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }
  function fill(id, ...children) {
    const target = document.getElementById(id);
    target.replaceChildren(...children);
    return target;
  }
  function empty(text) {
    return el("div", { class: "empty", text: text });
  }
  function setState(panel, state) {
    document.querySelector(`[data-panel="${panel}"]`).dataset.state = state;
  }
  // A table; a cell is text, a Node, or {text, field, atomic, cls}.
  function table(headers, rows, field) {
    // a column of text cells (names, reasons) is left-aligned, numbers right-aligned
    const textColumn = headers.map((_, i) => i === 0 || (rows.length > 0 && rows[0][i] !== null && typeof rows[0][i] === "object" && rows[0][i].cls === "text"));
    const head = el("tr", {}, ...headers.map((h, i) => el("th", { text: h, class: textColumn[i] ? "text" : null })));
    const lines = rows.map((cells, r) =>
      el(
        "tr",
        field ? { "data-row": field(r) } : {},
        ...cells.map((cell) => {
          if (cell instanceof Node) return el("td", {}, cell);
          if (cell !== null && typeof cell === "object") {
            return el("td", { text: cell.text, "data-field": cell.field, "data-atomic": cell.atomic, class: cell.cls });
          }
          return el("td", { text: cell === null || cell === undefined ? "–" : String(cell) });
        })
      )
    );
    return el("table", {}, el("thead", {}, head), el("tbody", {}, ...lines));
  }
  function money(atomic, field) {
    return { text: usd(atomic), atomic: String(atomic), field: field };
  }
  function bar(value, max, color) {
    const span = el("span");
    span.style.width = (max > 0 ? Math.max(0, (100 * value) / max) : 0).toFixed(1) + "%";
    if (color) span.style.background = color;
    return el("div", { class: "bar" }, span);
  }
  function legend(series) {
    return el(
      "div",
      { class: "legend" },
      ...series.map((s) => {
        const swatch = el("i");
        swatch.style.background = s.color;
        return el("span", {}, swatch, s.name);
      })
    );
  }

  // ---- SVG charts -----------------------------------------------------------------------
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    return node;
  }
  // The top of a 4-gridline axis holding `value`, so that each gridline is a round number.
  function niceMax(value) {
    if (value <= 0) return 1;
    const raw = value / 4;
    const p = 10 ** Math.floor(Math.log10(raw));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= raw) return 4 * m * p;
    return 40 * p;
  }
  // The frame of a chart over `times`: y from `low` to `high`, labels by `format`.
  function frame(times, low, high, format, label) {
    const W = 900, H = 220, L = 64, R = 10, T = 10, B = 24;
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
    const x = (i) => L + ((W - L - R) * (i + 0.5)) / times.length;
    const y = (v) => T + ((H - T - B) * (high - v)) / (high - low || 1);
    for (let k = 0; k <= 4; k++) {
      const v = low + ((high - low) * k) / 4;
      root.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#e2e5eb" }));
      const label = svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" });
      label.textContent = format(v);
      root.append(label);
    }
    const span = times.length > 1 ? times[times.length - 1] - times[0] : 0;
    const step = Math.max(1, Math.ceil(times.length / 8));
    for (let i = 0; i < times.length; i += step) {
      const label = svg("text", { x: x(i), y: H - 6, "text-anchor": "middle" });
      label.textContent = clock(times[i], span > 86400000);
      root.append(label);
    }
    return { root, x, y, width: (W - L - R) / times.length };
  }
  function lineChart(id, times, series, format) {
    const values = series.flatMap((s) => s.values);
    const high = niceMax(Math.max(0, ...values));
    const lowest = Math.min(0, ...values);
    const low = lowest < 0 ? -niceMax(-lowest) : 0;
    const f = frame(times, low, high, format, series.map((s) => s.name).join(", ") + " per bucket");
    if (low < 0) f.root.append(svg("line", { x1: f.x(0), x2: f.x(times.length - 1), y1: f.y(0), y2: f.y(0), stroke: "#6b7385" }));
    for (const s of series) {
      const points = s.values.map((v, i) => `${f.x(i).toFixed(1)},${f.y(v).toFixed(1)}`).join(" ");
      f.root.append(svg("polyline", { points, fill: "none", stroke: s.color, "stroke-width": 2, "data-series": s.name }));
      // markers make a sparse series (one busy minute in a quiet day) visible
      s.values.forEach((v, i) => {
        if (v) f.root.append(svg("circle", { cx: f.x(i).toFixed(1), cy: f.y(v).toFixed(1), r: 2.5, fill: s.color }));
      });
    }
    fill(id, f.root, legend(series));
  }
  function stackedBars(id, times, series) {
    const totals = times.map((_, i) => series.reduce((sum, s) => sum + s.values[i], 0));
    const high = niceMax(Math.max(0, ...totals));
    const f = frame(times, 0, high, (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1)), "calls per bucket by model");
    const base = times.map(() => 0);
    for (const s of series) {
      s.values.forEach((v, i) => {
        if (!v) return;
        const top = f.y(base[i] + v), bottom = f.y(base[i]);
        const rect = svg("rect", {
          x: (f.x(i) - f.width * 0.4).toFixed(1), y: top.toFixed(1),
          width: Math.max(1, f.width * 0.8).toFixed(1), height: Math.max(0.5, bottom - top).toFixed(1),
          fill: s.color, "data-series": s.name,
        });
        const tip = svg("title");
        tip.textContent = `${s.name}: ${v} at ${clock(times[i], true)}`;
        rect.append(tip);
        f.root.append(rect);
        base[i] += v;
      });
    }
    fill(id, f.root, legend(series));
  }

  // ---- panels ---------------------------------------------------------------------------
  function kpi(label, value, field, atomic, negative) {
    return el(
      "div",
      { class: "kpi" + (negative ? " negative" : "") },
      el("div", { class: "label", text: label }),
      el("div", { class: "value", text: value, "data-field": field, "data-atomic": atomic })
    );
  }
  function renderKpis(d) {
    const h = d.history, c = d.current.totals;
    const cards = [];
    if (h) {
      const t = h.totals;
      cards.push(
        kpi("Paid calls", count(t.calls), "calls"),
        kpi("Revenue", usd(t.revenue), "revenue", t.revenue),
        kpi("Upstream cost", usd(t.cost), "cost", t.cost),
        kpi("Margin", usd(t.margin), "margin", t.margin, BigInt(t.margin) < 0n),
        kpi("Payers", count(t.payers), "payers")
      );
    }
    cards.push(
      kpi("402 quotes (since start)", count(c.quotes), "quotes"),
      kpi("Refusals (since start)", count(c.refusals), "refusals"),
      kpi("Failovers (since start)", count(c.failovers), "failovers")
    );
    fill("kpis", ...cards);
    setState("kpis", "ok");
  }
  function renderRevenue(d) {
    const h = d.history;
    if (!h || h.calls.every((v) => v === 0)) {
      fill("revenue-chart", empty("No paid calls in this window."));
      setState("revenue", "empty");
      return;
    }
    lineChart(
      "revenue-chart",
      h.times,
      [
        { name: "revenue", values: h.revenue.map(usdNumber), color: COLORS[0] },
        { name: "upstream cost", values: h.cost.map(usdNumber), color: COLORS[1] },
        { name: "margin", values: h.margin.map(usdNumber), color: COLORS[2] },
      ],
      shortUsd
    );
    setState("revenue", "ok");
  }
  function renderModels(d) {
    const h = d.history;
    const live = Object.fromEntries(d.current.models.map((m) => [m.model, m]));
    if (!h || h.models.length === 0) {
      fill("models", empty("No paid calls in this window."));
      setState("models", "empty");
      return;
    }
    const max = Math.max(...h.models.map((m) => m.calls));
    const rows = h.models.map((m) => [
      { text: m.model, field: "model", cls: "text" },
      { text: count(m.calls), field: "calls" },
      bar(m.calls, max),
      money(m.revenue, "revenue"),
      money(m.cost, "cost"),
      money(m.margin, "margin"),
      { text: count(m.input_tokens) + " / " + count(m.output_tokens), field: "tokens" },
      { text: count(live[m.model] ? live[m.model].routed : 0), field: "routed" },
    ]);
    fill("models", table(["model", "calls", "", "revenue", "cost", "margin", "tokens in/out", "routed"], rows, (r) => h.models[r].model));
    setState("models", "ok");
  }
  function renderRouting(d) {
    const h = d.history, routing = d.current.routing;
    const parts = [];
    if (h && Object.keys(h.calls_by_model).length) {
      const series = Object.entries(h.calls_by_model).map(([name, values], i) => ({ name, values, color: COLORS[i % COLORS.length] }));
      stackedBars("routing-chart", h.times, series);
    } else {
      fill("routing-chart", empty("No routed calls in this window."));
    }
    if (h && Object.keys(h.calls_by_strategy).length) {
      const rows = Object.entries(h.calls_by_strategy).map(([name, values]) => [
        { text: name, field: "strategy", cls: "text" },
        { text: count(values.reduce((a, b) => a + b, 0)), field: "calls" },
        { text: count(values[values.length - 1]), field: "latest" },
      ]);
      parts.push(el("h3", { text: "Calls by strategy (this window)", class: "muted" }), table(["strategy", "calls", "latest bucket"], rows));
    }
    if (routing.length) {
      const rows = routing.map((r) => [
        { text: r.strategy, cls: "text" },
        { text: r.model, cls: "text", field: "model" },
        { text: r.reason, cls: "text" },
        { text: count(r.count), field: "count" },
      ]);
      parts.push(el("h3", { text: "Decisions since start (this instance)", class: "muted" }), table(["strategy", "model", "reason", "decisions"], rows));
    }
    fill("routing", ...(parts.length ? parts : [empty("No routing decisions yet.")]));
    setState("routing", routing.length || (h && h.calls.some((v) => v)) ? "ok" : "empty");
  }
  function renderHealth(d) {
    const live = Object.fromEntries(d.current.models.map((m) => [m.model, m]));
    const health = d.health || {};
    const rows = d.catalog.map((name) => {
      const m = live[name] || {}, s = health[name] || {};
      const open = s.breaker === "open" || m.breaker_open;
      const lat = m.latency || {}, fb = m.first_byte || {};
      return [
        { text: name, field: "model", cls: "text" },
        el("span", { class: "pill" + (open ? " open" : ""), text: open ? "open" : "closed", "data-field": "breaker" }),
        { text: count(s.calls), field: "health-calls" },
        { text: s.error_rate === undefined ? "–" : (100 * s.error_rate).toFixed(1) + "%", field: "error-rate" },
        { text: ms(lat.p50_ms), field: "p50" },
        { text: ms(lat.p95_ms), field: "p95" },
        { text: ms(lat.p99_ms), field: "p99" },
        { text: ms(fb.p50_ms), field: "first-byte-p50" },
        { text: count(lat.count), field: "observed" },
      ];
    });
    fill("health", table(["model", "breaker", "calls", "errors", "p50", "p95", "p99", "TTFB p50", "timed"], rows, (r) => d.catalog[r]));
    setState("health", d.current.models.some((m) => m.latency) ? "ok" : "empty");
  }
  function renderPayments(d) {
    const p = d.payments, parts = [];
    if (p) {
      const labels = { pending: "pending (broadcast, unconfirmed)", owed: "owed (delivered, unpaid)", claimed: "in flight: claimed", serving: "in flight: serving", settling: "in flight: settling" };
      const states = ["pending", "owed", "claimed", "serving", "settling"];
      const rows = states.map((s) => {
        const v = p.states[s] || { count: 0, amount: "0" };
        return [{ text: labels[s], cls: "text" }, { text: count(v.count), field: s + "-count" }, money(v.amount, s + "-amount")];
      });
      if (d.channels) {
        rows.push([
          { text: "channels: charged, not yet claimed" + (d.channels.complete ? "" : " (first channels only)"), cls: "text" },
          { text: count(d.channels.channels), field: "channels-count" },
          money(d.channels.amount, "channels-amount"),
        ]);
      }
      parts.push(table(["state", "payments", "amount"], rows));
      if (p.oldest.length) {
        const old = p.oldest.map((r) => [
          { text: r.state, cls: "text" }, { text: shortAddress(r.payer), cls: "text" }, { text: r.model, cls: "text" },
          money(r.amount), { text: r.age_s + " s" }, { text: r.reason, cls: "text" },
        ]);
        parts.push(el("h3", { text: "Oldest unresolved", class: "muted" }), table(["state", "payer", "model", "amount", "age", "reason"], old));
      }
    } else {
      parts.push(empty("The payment journal could not be read."));
    }
    const c = d.current;
    const refusals = c.refusals.map((r) => [{ text: r.scheme, cls: "text" }, { text: r.reason, cls: "text", field: "reason" }, { text: count(r.count), field: "count" }]);
    parts.push(el("h3", { text: "Refused payments since start", class: "muted" }), refusals.length ? table(["scheme", "reason", "refusals"], refusals) : empty("None."));
    const settle = Object.entries(c.settle).map(([scheme, s]) => [{ text: scheme, cls: "text" }, { text: ms(s.p50_ms) }, { text: ms(s.p95_ms) }, { text: count(s.count) }]);
    if (settle.length) parts.push(el("h3", { text: "Settlement latency", class: "muted" }), table(["scheme", "p50", "p95", "settled"], settle));
    fill("payments", ...parts);
    setState("payments", p ? "ok" : "empty");
  }
  function renderPayers(d) {
    const h = d.history;
    if (!h || h.top_payers.length === 0) {
      fill("payers", empty("No payers in this window."));
      setState("payers", "empty");
      return;
    }
    const max = Math.max(...h.top_payers.map((p) => usdNumber(p.revenue)));
    const rows = h.top_payers.map((p) => [
      { text: p.payer, field: "payer", cls: "text" },
      { text: count(p.calls), field: "calls" },
      money(p.revenue, "revenue"),
      bar(usdNumber(p.revenue), max, COLORS[2]),
    ]);
    fill("payers", table(["payer", "calls", "paid", ""], rows, (r) => h.top_payers[r].payer));
    setState("payers", "ok");
  }
  function renderCanary(d) {
    const rules = d.current.split;
    if (!rules.length) {
      fill("canary", empty("No split configured (or no call has matched a split rule since start)."));
      setState("canary", "none");
      return;
    }
    const blocks = rules.map((rule) => {
      const total = rule.arms.reduce((sum, a) => sum + a.calls, 0);
      const facts = rule.arms.map((a) => {
        const lat = a.latency || {};
        const positive = a.feedback.good || a.feedback.up || 0;
        const rated = Object.values(a.feedback).reduce((x, y) => x + y, 0);
        const perCall = a.calls ? (BigInt(a.revenue) / BigInt(a.calls)).toString() : "0";
        return {
          models: Object.keys(a.models).join(", ") || "–",
          calls: count(a.calls) + (total ? ` (${((100 * a.calls) / total).toFixed(1)}%)` : ""),
          latency: ms(lat.p50_ms) + " / " + ms(lat.p95_ms),
          revenue: usd(a.revenue),
          "revenue-per-call": usd(perCall),
          feedback: rated ? `${((100 * positive) / rated).toFixed(0)}% good of ${rated}` : "none yet",
        };
      });
      const labels = [["models", "models"], ["calls", "calls (share)"], ["latency", "latency p50 / p95"], ["revenue", "revenue"], ["revenue-per-call", "revenue per call"], ["feedback", "payer ratings"]];
      const head = el("tr", {}, el("th", { class: "text", text: "rule " + rule.rule }), ...rule.arms.map((a) => el("th", { class: "arm-head " + a.arm, text: a.arm })));
      const lines = labels.map(([key, label]) =>
        el("tr", {}, el("td", { class: "text muted", text: label }), ...rule.arms.map((a, i) => el("td", { text: facts[i][key], "data-arm": a.arm, "data-field": key })))
      );
      return el("table", { class: "arms", "data-rule": rule.rule }, el("thead", {}, head), el("tbody", {}, ...lines));
    });
    fill("canary", ...blocks);
    setState("canary", "ok");
  }

  function render(d) {
    decimals = d.asset.decimals;
    document.getElementById("network").textContent = `${d.network} · ${d.asset.name}`;
    for (const label of document.querySelectorAll(".window-label")) label.textContent = `(last ${d.window.name})`;
    const errors = document.getElementById("errors");
    errors.hidden = d.errors.length === 0;
    errors.textContent = d.errors.join("; ");
    for (const draw of [renderKpis, renderRevenue, renderModels, renderRouting, renderHealth, renderPayments, renderPayers, renderCanary]) {
      try {
        draw(d);
      } catch (exc) {
        errors.hidden = false;
        errors.textContent += ` ${draw.name}: ${exc}`;
      }
    }
    const h = d.history;
    const partial = h && h.complete_from_ms > h.start_ms ? ` (record cap reached: complete from ${clock(h.complete_from_ms, true)} UTC)` : "";
    document.getElementById("footer").textContent =
      `History from the payment journal (all instances): ${h ? count(h.records_read) : 0} records read${partial}. ` +
      `"Since start" figures are this instance's metrics (as /metrics). Times UTC; refreshes every ${refreshMs / 1000} s.`;
    document.getElementById("status").textContent = "updated " + new Date(d.now_ms).toISOString().slice(11, 19) + " UTC";
    body.dataset.updated = String(d.now_ms);
    body.dataset.loads = String(Number(body.dataset.loads || 0) + 1);
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const response = await fetch(`/dashboard/data?window=${encodeURIComponent(windowName)}`, { credentials: "same-origin", cache: "no-store" });
      if (response.status === 401) {
        window.location.reload();
        return;
      }
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
    } catch (exc) {
      document.getElementById("status").textContent = "update failed: " + exc.message + " (retrying)";
    }
    timer = setTimeout(refresh, refreshMs);
  }

  function pressWindow() {
    for (const b of document.querySelectorAll("#windows button")) b.setAttribute("aria-pressed", String(b.dataset.window === windowName));
  }
  document.getElementById("windows").addEventListener("click", (event) => {
    const name = event.target.dataset && event.target.dataset.window;
    if (!name) return;
    windowName = name;
    history.replaceState(null, "", "#" + name);
    pressWindow();
    refresh();
  });
  pressWindow();
  refresh();
})();
