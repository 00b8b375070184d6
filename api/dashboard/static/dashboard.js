// infaas dashboard: polls its page's JSON and renders it. Text goes in with textContent
// only (tenant names are free text); charts are plotly.js, served by the control plane.
"use strict";

(() => {
  const body = document.body;
  const base = body.dataset.base;
  const page = body.dataset.page;
  const POLL_MS = page === "models" ? 10000 : 2000;
  const PLOT_CONFIG = { displayModeBar: false, responsive: true };
  const COLOURS = { fp32: "#2456c9", bf16: "#1b7f3b", int8: "#c2410c" };
  const SYMBOLS = { onnxruntime: "circle", openvino: "square" };
  const PALETTE = ["#2456c9", "#c2410c", "#1b7f3b", "#7c3aed", "#b91c1c", "#0e7490", "#a16207", "#be185d"];
  const colourOf = (names) => Object.fromEntries([...names].sort().map((n, i) => [n, PALETTE[i % PALETTE.length]]));

  // --- small helpers -------------------------------------------------------------------
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "class") node.className = v;
      else if (k === "title") node.title = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
    return node;
  }
  const fmt = (x, d = 1) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
  const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + " %");
  const age = (s) => (s === null || s === undefined ? "–" : s < 90 ? `${s.toFixed(0)} s` : `${(s / 60).toFixed(1)} min`);
  const when = (ts) => new Date(ts * 1000).toLocaleTimeString();
  const num = (x, d) => el("td", { class: "num" }, typeof x === "number" && d !== undefined ? fmt(x, d) : x ?? "–");
  const pills = (xs) => el("td", {}, ...(xs.length ? xs.map((x) => el("span", { class: "pill" }, x)) : ["–"]));

  function setRows(id, rows, emptyText) {
    const table = document.getElementById(id);
    const tbody = table.querySelector("tbody");
    const frag = document.createDocumentFragment();
    if (!rows.length && emptyText) {
      const n = table.querySelectorAll("thead th").length;
      frag.append(el("tr", {}, el("td", { colspan: String(n), class: "note" }, emptyText)));
    }
    for (const cells of rows) {
      frag.append(el("tr", {}, ...cells.map((c) => (c instanceof Node && c.tagName === "TD" ? c : el("td", {}, c)))));
    }
    tbody.replaceChildren(frag);
  }

  function text(id, value, cls) {
    const node = document.getElementById(id);
    if (!node) return;
    node.textContent = value;
    if (cls !== undefined) node.className = "big " + cls;
  }

  function plot(id, traces, layout) {
    const node = document.getElementById(id);
    if (!node || !window.Plotly) return;
    const base = {
      margin: { l: 56, r: 16, t: 36, b: 44 },
      legend: { orientation: "h", y: -0.2 },
      font: { size: 12 },
      paper_bgcolor: "#fff",
      plot_bgcolor: "#fff",
    };
    window.Plotly.react(node, traces, Object.assign(base, layout), PLOT_CONFIG);
  }

  async function fetchPage(name) {
    const resp = await fetch(`${base}/api/${name}`, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      cache: "no-store",
    });
    if (resp.status === 401 || resp.status === 403) {
      window.location.assign(`${base}/login`);
      throw new Error("not logged in");
    }
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    return resp.json();
  }

  // --- overview ------------------------------------------------------------------------
  function overview(d) {
    text("h-control", d.health.control, "good");
    text("h-workers", d.health.workers, d.health.workers === "ready" ? "good" : "bad");
    text("h-live", `${d.health.live_workers} live worker replica(s)`);
    text("h-keyservice", d.health.keyservice, d.health.keyservice === "live" ? "good" : "bad");
    text("total-requests", String(d.totals.requests));
    text(
      "total-detail",
      `SLO met ${pct(d.totals.slo_attainment)} · errors ${d.totals.errors} · infeasible ${d.totals.infeasible}`,
    );
    const tee = (backend, simulated) =>
      el("td", {}, el("span", { class: simulated ? "pill sim" : "pill" }, simulated ? "simulated — NOT CONFIDENTIAL" : backend));
    const meas = (m) => el("td", { class: "mono", title: m }, m ? m.slice(0, 16) + "…" : "–");
    setRows(
      "workers",
      d.workers.map((w) => [
        el("td", { class: "mono" }, w.replica),
        w.pool,
        tee(w.tee_backend, w.simulated),
        meas(w.measurement),
        el("td", { class: w.verdict.startsWith("accepted") ? "good" : "bad" }, w.verdict),
        num(age(w.evidence_age_s)),
        pills(w.loaded_variants),
        num(w.outstanding),
        num(w.requests),
        num(w.errors),
        el("td", { class: w.live ? "good" : "bad" }, w.live ? `${age(w.age_s)} ago` : `gone (${age(w.age_s)})`),
      ]),
      "No worker has reported yet.",
    );
    setRows(
      "keyservice",
      d.keyservice.map((k) => [
        el("td", { class: "mono" }, k.replica),
        tee(k.tee_backend, k.simulated),
        meas(k.measurement),
        num(`${k.releases} (${k.released_keys})`),
        Object.entries(k.refusals).map(([c, n]) => `${c}: ${n}`).join(", ") || "none",
        el("td", { class: k.live ? "good" : "bad" }, k.live ? `${age(k.age_s)} ago` : "silent"),
      ]),
      "The key service has not reported yet.",
    );
    setRows(
      "pools",
      d.pools.map((p) => [p.pool, num(p.replicas), num(p.num_cpus), num(p.num_gpus), num(p.cost_per_replica_s)]),
    );
  }

  // --- models and variants -------------------------------------------------------------
  let modelsShown = "";
  function models(d) {
    const key = JSON.stringify(d);
    if (key === modelsShown) return;
    modelsShown = key;
    const root = document.getElementById("tasks");
    if (!d.tasks.length) {
      root.replaceChildren(el("p", { class: "empty" }, "No task is registered yet."));
      return;
    }
    root.replaceChildren();
    for (const t of d.tasks) {
      const chartId = `chart-${t.task}`;
      const tableId = `table-${t.task}`;
      const table = el(
        "table",
        { id: tableId },
        el(
          "thead",
          {},
          el(
            "tr",
            {},
            ...["variant", "model", "precision", "backend", "accuracy", "p50 b1 ms", "p99 b1 ms", "best batch",
              "p50 best ms", "peak samples/s", "load ms", "memory MB", "frontier"].map((h) => el("th", {}, h)),
          ),
        ),
        el("tbody"),
      );
      root.append(
        el(
          "section",
          { class: "task" },
          el("h2", {}, `task ${t.task} — ${t.models.length} model(s), ${t.profiled} profiled variant(s)`),
          el("div", { class: "chart", id: chartId, "data-points": String(t.profiled) }),
          table,
        ),
      );
      const measured = t.variants.filter((v) => v.accuracy !== null);
      setRows(
        tableId,
        t.variants.map((v) => [
          el("td", { class: "mono" }, v.variant_id),
          v.model_id,
          v.precision + (v.quantization === "dynamic" ? " (dyn)" : ""),
          v.backend,
          num(v.accuracy === null ? "not profiled" : `${fmt(v.accuracy, 3)}${v.accuracy_kind === "agreement" ? " (agr)" : ""}`),
          num(v.p50_b1_ms, 2),
          num(v.p99_b1_ms, 2),
          num(v.best_batch),
          num(v.best_batch_p50_ms, 2),
          num(v.peak_throughput_rps, 0),
          num(v.load_ms, 0),
          num(v.peak_memory_mb, 1),
          [v.pareto_b1 ? "b1" : "", v.pareto_best ? "best" : ""].filter(Boolean).join(", ") || "–",
        ]),
      );
      const front = (flag, x) => measured.filter((v) => v[flag]).sort((a, b) => a[x] - b[x]);
      const f1 = front("pareto_b1", "p50_b1_ms");
      const fb = front("pareto_best", "best_batch_p50_ms");
      const colours = measured.map((v) => COLOURS[v.precision] || "#666");
      const symbols = measured.map((v) => SYMBOLS[v.backend] || "circle");
      const hover = measured.map((v) => `${v.variant_id}<br>acc ${fmt(v.accuracy, 3)}`);
      plot(
        chartId,
        [
          {
            name: "batch 1",
            type: "scatter",
            mode: "markers",
            x: measured.map((v) => v.p50_b1_ms),
            y: measured.map((v) => v.accuracy),
            text: hover,
            hovertemplate: "%{text}<br>p50 b1 %{x:.2f} ms<extra></extra>",
            marker: { size: 11, color: colours, symbol: symbols, line: { width: 1, color: "#222" } },
          },
          {
            name: "best batch",
            type: "scatter",
            mode: "markers",
            x: measured.map((v) => v.best_batch_p50_ms),
            y: measured.map((v) => v.accuracy),
            text: measured.map((v) => `${v.variant_id}<br>batch ${v.best_batch}`),
            hovertemplate: "%{text}<br>p50 %{x:.2f} ms<extra></extra>",
            marker: { size: 9, color: "rgba(0,0,0,0)", symbol: symbols, line: { width: 2, color: colours } },
          },
          {
            name: "Pareto frontier (batch 1)",
            type: "scatter",
            mode: "lines",
            line: { dash: "dash", color: "#222", shape: "hv" },
            x: f1.map((v) => v.p50_b1_ms),
            y: f1.map((v) => v.accuracy),
            hoverinfo: "skip",
          },
          {
            name: "Pareto frontier (best batch)",
            type: "scatter",
            mode: "lines",
            line: { dash: "dot", color: "#888", shape: "hv" },
            x: fb.map((v) => v.best_batch_p50_ms),
            y: fb.map((v) => v.accuracy),
            hoverinfo: "skip",
          },
        ],
        {
          title: { text: `${t.task}: accuracy vs p50 latency (colour: fp32 blue, bf16 green, int8 orange; ■ OpenVINO, ● onnxruntime)`, font: { size: 13 } },
          xaxis: { title: { text: "p50 latency, ms (log)" }, type: "log" },
          yaxis: { title: { text: "top-1 accuracy" } },
        },
      );
    }
  }

  // --- live traffic --------------------------------------------------------------------
  function lines(t, groups, key, dash) {
    const xs = t.map((s) => new Date(s * 1000));
    const colour = colourOf(Object.keys(groups));
    return Object.entries(groups).map(([name, g]) => ({
      name, type: "scatter", mode: "lines+markers", x: xs, y: g[key], connectgaps: false,
      marker: { size: 4, color: colour[name] }, line: { color: colour[name], dash: dash || "solid" },
    }));
  }
  function latencyTraces(t, groups) {
    return [
      ...lines(t, groups, "p50").map((tr) => Object.assign(tr, { name: `${tr.name} p50` })),
      ...lines(t, groups, "p99", "dot").map((tr) => Object.assign(tr, { name: `${tr.name} p99` })),
    ];
  }
  function traffic(d) {
    text("total-requests", String(d.totals.requests));
    text("total-slo", pct(d.window_totals.slo_attainment));
    text("total-errors", String(d.totals.errors), d.totals.errors ? "bad" : "good");
    text("errors-by-code", Object.entries(d.totals.errors_by_code).map(([c, n]) => `${c}: ${n}`).join(" · ") || "none");
    text("total-infeasible", String(d.totals.infeasible));
    text("interval", String(d.interval_s));
    text("window", String(d.window_s / 60));
    const time = { type: "date" };
    for (const [prefix, groups] of [["task", d.by_task], ["tenant", d.by_tenant]]) {
      plot(`${prefix}-rps`, lines(d.t, groups, "rps"), { title: { text: `requests/s per ${prefix}`, font: { size: 13 } }, xaxis: time, yaxis: { rangemode: "tozero" } });
      plot(`${prefix}-lat`, latencyTraces(d.t, groups), { title: { text: `latency p50 / p99 (ms) per ${prefix}`, font: { size: 13 } }, xaxis: time, yaxis: { rangemode: "tozero" } });
      plot(`${prefix}-slo`, lines(d.t, groups, "slo"), { title: { text: `SLO attainment per ${prefix}`, font: { size: 13 } }, xaxis: time, yaxis: { range: [0, 1.05], tickformat: ".0%" } });
    }
    setRows(
      "traffic-rows",
      d.rows.map((r) => [
        r.tenant, r.task, num(r.requests), num(r.rps_1m, 2), num(r.p50_ms, 2), num(r.p99_ms, 2),
        num(pct(r.slo_attainment)), num(r.errors), num(r.infeasible), pills(r.variants), num(r.total_requests),
      ]),
      "No request yet.",
    );
  }

  // --- autoscaler ----------------------------------------------------------------------
  function autoscaler(d) {
    const r = d.replicas;
    text(
      "replicas-source",
      r.source === "autoscaler"
        ? "Replica counts the autoscaler decided."
        : "Until the autoscaler records decisions: worker replicas holding each variant loaded, from the workers' own reports.",
    );
    const xs = r.t.map((s) => new Date(s * 1000));
    const colour = colourOf(Object.keys(r.series));
    const traces = Object.entries(r.series).map(([v, ys]) => ({
      name: v, type: "scatter", mode: "lines+markers", line: { shape: "hv", color: colour[v] },
      marker: { size: 4, color: colour[v] }, x: xs, y: ys,
    }));
    plot("replicas-chart", traces, { title: { text: "replicas per variant", font: { size: 13 } }, xaxis: { type: "date" }, yaxis: { rangemode: "tozero", dtick: 1 } });
    document.getElementById("events-empty").hidden = d.events.length > 0;
    setRows(
      "events",
      d.events.map((e) => [
        el("td", { class: "nowrap" }, when(e.ts), e.count > 1 ? el("div", { class: "note" }, `×${e.count} since ${when(e.first_ts)}`) : ""),
        e.kind, e.task || "–",
        el("td", { class: "mono" }, e.from_variant_id ? `${e.from_variant_id} → ${e.variant_id}` : e.variant_id || "–"),
        num(e.from_replicas === null && e.to_replicas === null ? "–" : `${e.from_replicas ?? "?"} → ${e.to_replicas ?? "?"}`),
        e.reason,
      ]),
    );
  }

  // --- tenants -------------------------------------------------------------------------
  function tenants(d) {
    text("grants-note", d.grants_note);
    setRows(
      "tenants",
      d.tenants.map((t) => [
        el("td", { class: "mono" }, t.tenant_id), t.name, t.created_at ? when(t.created_at) : "–", pills(t.tasks), pills(t.models_served),
        num(t.requests), num(t.errors),
      ]),
      "No tenant yet.",
    );
  }

  const render = { overview, models, traffic, autoscaler, tenants };
  const updated = document.getElementById("updated");
  async function tick() {
    try {
      render[page](await fetchPage(page));
      updated.textContent = `· updated ${new Date().toLocaleTimeString()}`;
      body.dataset.updates = String(Number(body.dataset.updates || 0) + 1);
    } catch (e) {
      updated.textContent = `· update failed: ${e.message}`;
    } finally {
      setTimeout(tick, POLL_MS);
    }
  }
  tick();
})();
