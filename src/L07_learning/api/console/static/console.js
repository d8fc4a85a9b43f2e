// Draws each loss chart with uPlot (hover values, zoom) over the server-drawn SVG; charts refreshed by htmx are
// drawn again. Without this script the SVG and the table stay: the page needs no JavaScript to be read.
(function () {
  "use strict";
  function draw(root) {
    root.querySelectorAll("figure.loss-chart[data-points]").forEach(function (fig) {
      var data = JSON.parse(document.getElementById(fig.dataset.points).textContent);
      var train = data.train_loss || [], evals = data.eval_loss || [];
      if (!train.length && !evals.length) return;
      var xs = Array.from(new Set(train.map(function (p) { return p[0]; }).concat(evals.map(function (p) { return p[0]; }))))
        .sort(function (a, b) { return a - b; });
      var t = new Map(train), e = new Map(evals);
      var series = [xs, xs.map(function (x) { return t.has(x) ? t.get(x) : null; }),
                    xs.map(function (x) { return e.has(x) ? e.get(x) : null; })];
      var width = Math.min(fig.clientWidth - 16, 760);
      var holder = document.createElement("div");
      holder.className = "uplot-holder";
      fig.querySelectorAll(".uplot-holder").forEach(function (old) { old.remove(); });
      fig.insertBefore(holder, fig.firstChild);
      new uPlot({ width: Math.max(width, 260), height: 240, scales: { x: { time: false } },
        series: [{ label: "step" }, { label: "train loss", stroke: "#0b5cad", spanGaps: true },
                 { label: "eval loss", stroke: "#d1242f", spanGaps: true, points: { show: true } }] }, series, holder);
      var svg = fig.querySelector("svg");
      if (svg) svg.style.display = "none";
    });
  }
  // Outcomes: one quality line per model on a time axis, releases and rollbacks as vertical lines.
  var COLOURS = ["#0b5cad", "#8250df", "#bf8700", "#1a7f37", "#cf222e", "#57606a"];
  function drawOutcomes(root) {
    root.querySelectorAll("figure.outcomes-chart[data-points]").forEach(function (fig) {
      var data = JSON.parse(document.getElementById(fig.dataset.points).textContent);
      var xs = Array.from(new Set([].concat.apply([], data.models.map(function (m) {
        return m.points.map(function (p) { return p[0]; }); })))).sort(function (a, b) { return a - b; });
      if (!xs.length) return;
      var columns = [xs].concat(data.models.map(function (m) {
        var at = new Map(m.points);
        return xs.map(function (x) { return at.has(x) ? at.get(x) : null; });
      }));
      var series = [{ label: "time" }].concat(data.models.map(function (m, i) {
        return { label: m.label, stroke: COLOURS[i % COLOURS.length], spanGaps: true, points: { show: true } }; }));
      var markers = { id: "markers", hooks: { draw: [function (u) {
        var ctx = u.ctx;
        data.markers.forEach(function (k) {
          var x = Math.round(u.valToPos(k.t, "x", true));
          ctx.save();
          ctx.strokeStyle = k.kind === "rollback" ? "#cf222e" : "#1a7f37";
          ctx.setLineDash([6, 4]);
          ctx.beginPath(); ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke();
          ctx.restore();
        });
      }] } };
      var holder = document.createElement("div");
      holder.className = "uplot-holder";
      fig.querySelectorAll(".uplot-holder").forEach(function (old) { old.remove(); });
      fig.insertBefore(holder, fig.firstChild);
      new uPlot({ width: Math.max(Math.min(fig.clientWidth - 16, 900), 260), height: 260, plugins: [markers],
        series: series }, columns, holder);
    });
  }
  document.addEventListener("DOMContentLoaded", function () { draw(document); drawOutcomes(document); });
  document.addEventListener("htmx:afterSettle", function (ev) { draw(ev.target); });
})();
