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
  document.addEventListener("DOMContentLoaded", function () { draw(document); });
  document.addEventListener("htmx:afterSettle", function (ev) { draw(ev.target); });
})();
