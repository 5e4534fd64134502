const canvas = element.querySelector('canvas');
const ctx = canvas.getContext('2d');
let points = [], drawing = false, lastTime = 0;
function pos(e) {
  const r = canvas.getBoundingClientRect();
  return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
}
function clear() { ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, canvas.width, canvas.height); }
clear();
canvas.style.touchAction = 'none';
canvas.addEventListener('pointerdown', e => {
  drawing = true; points = [pos(e)]; lastTime = performance.now(); clear();
  canvas.setPointerCapture(e.pointerId);
});
canvas.addEventListener('pointermove', e => {
  if (!drawing) return;
  const now = performance.now();
  if (now - lastTime < 15) return;  // sample about every 15 ms, like a tracker would
  lastTime = now;
  const p = pos(e), q = points[points.length - 1];
  points.push(p);
  ctx.strokeStyle = '#222'; ctx.lineWidth = 3; ctx.beginPath(); ctx.moveTo(q[0], q[1]); ctx.lineTo(p[0], p[1]);
  ctx.stroke();
});
canvas.addEventListener('pointerup', e => {
  if (!drawing) return;
  drawing = false;
  if (points.length >= 2) trigger('submit', {points: points.map(p => [Math.round(p[0] * 10) / 10,
                                                                         Math.round(p[1] * 10) / 10])});
});
