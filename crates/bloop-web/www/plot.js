// Line and point plots drawn as SVG, with log axes: enough for the page's two figures.

const NS = 'http://www.w3.org/2000/svg';
// The legend runs across the top, between the title and the frame, clear of the data.
const MARGIN = { left: 64, right: 16, top: 46, bottom: 44 };
const LEGEND_WIDTH = 130;

function element(name, attributes, parent) {
  const node = document.createElementNS(NS, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  parent?.appendChild(node);
  return node;
}

function text(parent, x, y, content, attributes = {}) {
  element('text', { x, y, ...attributes }, parent).textContent = content;
}

// Positive finite values only on a log axis.
function usable(value, log) {
  return Number.isFinite(value) && (!log || value > 0);
}

function axis(values, log) {
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (!Number.isFinite(lo)) [lo, hi] = log ? [1, 10] : [0, 1];
  if (log) {
    lo = Math.log10(lo);
    hi = Math.log10(hi);
  }
  if (hi - lo < 1e-9) [lo, hi] = [lo - 0.5, hi + 0.5];
  const pad = (hi - lo) * 0.05;
  return { lo: lo - pad, hi: hi + pad, log };
}

function ticks({ lo, hi, log }) {
  if (log) {
    const out = [];
    for (let e = Math.ceil(lo); e <= Math.floor(hi); e++) out.push(e);
    if (out.length < 2) out.push(lo + (hi - lo) / 3, lo + (2 * (hi - lo)) / 3);
    return out.map((e) => ({ at: e, label: formatNumber(10 ** e) }));
  }
  const step = 10 ** Math.floor(Math.log10((hi - lo) / 4));
  const size = [1, 2, 5, 10].map((m) => m * step).find((s) => (hi - lo) / s <= 6) ?? 10 * step;
  const out = [];
  for (let v = Math.ceil(lo / size) * size; v <= hi; v += size) out.push({ at: v, label: formatNumber(v) });
  return out;
}

export function formatNumber(v) {
  if (v === 0) return '0';
  const magnitude = Math.abs(v);
  if (magnitude >= 1e4 || magnitude < 1e-2) {
    // A power of ten as 1e4, anything between with a digit more (3.2e4).
    const digits = Math.abs(Math.log10(magnitude) - Math.round(Math.log10(magnitude))) < 1e-9 ? 0 : 1;
    return v.toExponential(digits).replace('e+', 'e');
  }
  return Number(v.toPrecision(3)).toString();
}

// series: [{ name, color, points: [[x, y], ...], line: bool, markers: bool }]
export function plot(svg, { title, xLabel, yLabel, xLog = false, yLog = false, series }) {
  svg.replaceChildren();
  const [, , width, height] = svg.getAttribute('viewBox').split(' ').map(Number);
  const inner = { w: width - MARGIN.left - MARGIN.right, h: height - MARGIN.top - MARGIN.bottom };
  const points = series.flatMap((s) => s.points.filter(([x, y]) => usable(x, xLog) && usable(y, yLog)));
  const xAxis = axis(points.map(([x]) => x), xLog);
  const yAxis = axis(points.map(([, y]) => y), yLog);
  const scale = (a, v, size, flip) => {
    const t = ((a.log ? Math.log10(v) : v) - a.lo) / (a.hi - a.lo);
    return flip ? MARGIN.top + (1 - t) * size : MARGIN.left + t * size;
  };
  const sx = (v) => scale(xAxis, v, inner.w, false);
  const sy = (v) => scale(yAxis, v, inner.h, true);

  text(svg, width / 2, 18, title, { 'text-anchor': 'middle', class: 'title' });
  const frame = { x: MARGIN.left, y: MARGIN.top, width: inner.w, height: inner.h };
  element('rect', { ...frame, class: 'frame' }, svg);
  for (const t of ticks(xAxis)) {
    const x = MARGIN.left + ((t.at - xAxis.lo) / (xAxis.hi - xAxis.lo)) * inner.w;
    element('line', { x1: x, x2: x, y1: MARGIN.top, y2: MARGIN.top + inner.h, class: 'grid' }, svg);
    text(svg, x, MARGIN.top + inner.h + 16, t.label, { 'text-anchor': 'middle' });
  }
  for (const t of ticks(yAxis)) {
    const y = MARGIN.top + (1 - (t.at - yAxis.lo) / (yAxis.hi - yAxis.lo)) * inner.h;
    element('line', { x1: MARGIN.left, x2: MARGIN.left + inner.w, y1: y, y2: y, class: 'grid' }, svg);
    text(svg, MARGIN.left - 6, y + 4, t.label, { 'text-anchor': 'end' });
  }
  text(svg, MARGIN.left + inner.w / 2, height - 6, xLabel, { 'text-anchor': 'middle' });
  text(svg, 14, MARGIN.top + inner.h / 2, yLabel, {
    'text-anchor': 'middle',
    transform: `rotate(-90 14 ${MARGIN.top + inner.h / 2})`,
  });

  const clip = `clip-${svg.id}`;
  element('rect', frame, element('clipPath', { id: clip }, element('defs', {}, svg)));
  const body = element('g', { 'clip-path': `url(#${clip})` }, svg);
  series.forEach((s, i) => {
    const kept = s.points.filter(([x, y]) => usable(x, xLog) && usable(y, yLog));
    if (s.line !== false && kept.length > 1) {
      const d = kept.map(([x, y], k) => `${k ? 'L' : 'M'}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join('');
      element('path', { d, stroke: s.color, class: 'series' }, body);
    }
    if (s.markers) {
      for (const [x, y] of kept) element('circle', { cx: sx(x), cy: sy(y), r: 3.5, fill: s.color }, body);
    }
    const ly = MARGIN.top - 8;
    const lx = MARGIN.left + i * LEGEND_WIDTH;
    element('line', { x1: lx, x2: lx + 18, y1: ly - 4, y2: ly - 4, stroke: s.color, class: 'legend' }, svg);
    text(svg, lx + 24, ly, s.name);
  });
}
