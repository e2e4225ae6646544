
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("dashboard-data").textContent);
  D.rendered = {};
  window.__DASHBOARD__ = D;
  var NICE = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1];
  // Error rates are fractions in [0, 1]. The axis runs from 0 to the next nice step above the
  // highest rate (0-1% when all are 0), never past 1 (100%).
  function rateRange(u, min, max) {
    if (!(max > 0)) { return [0, 0.01]; }
    for (var i = 0; i < NICE.length; i++) { if (NICE[i] >= max * 1.05) { return [0, NICE[i]]; } }
    return [0, 1];
  }
  function percent(v, digits) { return (v * 100).toFixed(digits) + "%"; }
  function rateTicks(u, splits, axis, space, incr) {
    var digits = Math.max(0, Math.min(3, Math.ceil(-Math.log10(incr * 100) - 1e-9)));
    return splits.map(function (v) { return v == null ? null : percent(v, digits); });
  }
  // UTC times as short as the tick spacing allows; the date goes on a second line, on the
  // first tick and where the day changes.
  function timeTicks(u, splits, axis, space, incr) {
    var day = null;
    return splits.map(function (ts) {
      if (ts == null) { return null; }
      var iso = new Date(ts * 1e3).toISOString(), date = iso.slice(5, 10);
      var time = incr >= 86400 ? "" : iso.slice(11, incr >= 60 ? 16 : incr >= 1 ? 19 : 22);
      var label = time === "" ? date : date !== day ? time + "\n" + date : time;
      day = date;
      return label;
    });
  }
  var measure = document.createElement("canvas").getContext("2d");
  function ticks(u) {
    return u.axes.map(function (a) {
      var labels = (a._values || []).map(function (l) { return l == null ? null : String(l); });
      measure.font = a.font[0].replace(/[0-9.]+px/, a.font[2] + "px");
      return { scale: a.scale, values: (a._splits || []).slice(), labels: labels,
        pos: (a._splits || []).map(function (v) { return u.valToPos(v, a.scale); }),
        widths: labels.map(function (l) { return l == null ? 0 : Math.max.apply(null,
          l.split("\n").map(function (line) { return measure.measureText(line).width; })); }) };
    });
  }
  function utc(ts) { return uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"); }
  function build(el) {
    var name = el.getAttribute("data-chart"), c = D.charts[name], rate = c.unit === "%";
    var target = el.querySelector(".plot");
    var series = [{ label: "finished (UTC)" }];
    c.series.forEach(function (s) {
      series.push({ label: s.label, stroke: D.colors[s.consumer], width: 2, spanGaps: true,
        dash: s.dashed ? [6, 4] : undefined, points: { show: true, size: 5 },
        value: rate ? function (u, v) { return v == null ? "--" : percent(v, 2); } : undefined });
    });
    var y = { label: rate ? "error rate" : c.unit, size: 70 };
    if (rate) { y.values = rateTicks; }
    var x = { values: timeTicks, space: 90, size: 56 };
    var scales = { x: { time: true } };
    // Counts, rates and latencies from 0 (or below, for a negative skewed latency), so a dip
    // in one consumer's line is not magnified by an axis starting near its minimum.
    scales.y = { range: rate ? rateRange : function (u, min, max) {
      return uPlot.rangeNum(Math.min(0, min), max, 0.1, true); } };
    var opts = { width: Math.max(320, target.clientWidth), height: 260, tzDate: utc,
      series: series, axes: [x, y], scales: scales, legend: { live: false },
      padding: [12, 40, 0, 0],
      hooks: { draw: [function (u) {
        if (D.rendered[name]) { D.rendered[name].axes = ticks(u); } }] } };
    var u = new uPlot(opts, [c.x].concat(c.series.map(function (s) { return s.values; })), target);
    var plotted = u.data.map(function (a) { return Array.prototype.slice.call(a); });
    var points = 0;
    plotted.slice(1).forEach(function (a) {
      a.forEach(function (v) { if (v != null) { points += 1; } }); });
    el.setAttribute("data-rendered-points", String(points));
    D.rendered[name] = { points: points, data: plotted, axes: ticks(u),
      labels: u.series.slice(1).map(function (s) { return s.label; }) };
    return u;
  }
  var plots = Array.prototype.map.call(document.querySelectorAll("[data-chart]"), build);
  window.addEventListener("resize", function () {
    plots.forEach(function (u) {
      u.setSize({ width: Math.max(320, u.root.parentNode.clientWidth), height: 260 });
    });
  });
})();
