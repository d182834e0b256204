// Draws each step's convergence plots with uPlot from the JSON in #wiggum-data.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("wiggum-data").textContent);
  var css = getComputedStyle(document.documentElement);
  function v(name) { return css.getPropertyValue(name).trim(); }
  var fg = v("--muted"), grid = v("--grid");
  function axis(scale, side, label, fmt) {
    var a = { scale: scale, side: side, label: label, stroke: fg, grid: { stroke: grid, width: 1 },
              ticks: { stroke: grid, width: 1 }, labelSize: 18, size: 52 };
    if (side === 1) { a.grid = { show: false }; }
    if (fmt) { a.values = function (u, vals) { return vals.map(fmt); }; }
    return a;
  }
  var xAxis = { stroke: fg, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000], grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 },
                label: "iteration", labelSize: 18,
                values: function (u, vals) { return vals.map(function (x) { return Number.isInteger(x) ? x : ""; }); } };
  var bars = uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.6, 40] }) : null;
  function options(kind, step, width) {
    var base = { width: width, height: 220, legend: { show: true }, cursor: { drag: { x: false, y: false } },
                 scales: { x: { time: false,
                   // half an iteration of room each side, so the first and last bars are whole
                   range: function (u, min, max) { return [min - 0.5, max + 0.5]; } } } };
    if (kind === "checks") {
      var most = Math.max.apply(null, step.total.map(function (t) { return t || 0; }).concat([1]));
      base.scales.n = { range: [0, most] };
      base.scales.v = { range: [-0.1, 1.1] };
      var counts = axis("n", 3, "checks passing");
      counts.incrs = [1, 2, 5, 10, 20, 50, 100];
      counts.values = function (u, vals) { return vals.map(function (x) { return Number.isInteger(x) ? x : ""; }); };
      base.axes = [xAxis, counts,
                   axis("v", 1, "review", function (x) { return x === 1 ? "approved" : x === 0 ? "rejected" : ""; })];
      base.series = [{ label: "iteration" },
        { label: "checks passing", scale: "n", stroke: v("--ok"), width: 2, points: { show: step.n.length <= 60 } },
        { label: "checks run", scale: "n", stroke: fg, dash: [4, 4], width: 1, points: { show: false } },
        { label: "review (1 approved, 0 rejected)", scale: "v", stroke: v("--accent"), width: 0,
          points: { show: true, size: 8, fill: v("--accent") }, paths: function () { return null; } }];
      return [base, [step.n, step.passed, step.total, step.verdict]];
    }
    base.axes = [xAxis, axis("lines", 3, "diff lines"), axis("tok", 1, "tokens"),
                 axis("usd", 1, "cost $", function (x) { return x == null ? "" : "$" + x.toFixed(x < 0.1 ? 3 : 2); })];
    base.scales.lines = { range: function (u, min, max) { return [0, Math.max(1, max)]; } };
    base.scales.tok = { range: function (u, min, max) { return [0, Math.max(1, max)]; } };
    base.scales.usd = { range: function (u, min, max) { return [0, Math.max(0.001, max)]; } };
    base.series = [{ label: "iteration" },
      { label: "diff lines", scale: "lines", stroke: v("--warn"), fill: v("--warn") + "55", width: 1,
        paths: bars || undefined, points: { show: false } },
      { label: "tokens", scale: "tok", stroke: v("--accent"), width: 2, points: { show: step.n.length <= 60 } },
      { label: "cost $", scale: "usd", stroke: v("--fail"), width: 2, dash: [6, 3], points: { show: step.n.length <= 60 },
        value: function (u, x) { return x == null ? "–" : "$" + x.toFixed(4); } }];
    return [base, [step.n, step.lines, step.tokens, step.cost]];
  }
  var charts = [];
  var nodes = document.querySelectorAll(".plot");
  for (var i = 0; i < nodes.length; i++) {
    var node = nodes[i];
    var step = data.steps[Number(node.getAttribute("data-step"))];
    if (!step || step.n.length === 0) { continue; }
    var made = options(node.getAttribute("data-kind"), step, Math.max(300, node.clientWidth));
    charts.push({ node: node, chart: new uPlot(made[0], made[1], node) });
  }
  var pending = null;
  window.addEventListener("resize", function () {
    if (pending) { clearTimeout(pending); }
    pending = setTimeout(function () {
      charts.forEach(function (c) { c.chart.setSize({ width: Math.max(300, c.node.clientWidth), height: 220 }); });
    }, 100);
  });
  document.body.setAttribute("data-plots", String(charts.length));
})();
