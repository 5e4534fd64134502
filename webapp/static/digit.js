const canvas = element.querySelector('canvas');
const ctx = canvas.getContext('2d');
let drawing = false, last = null;
function clear() { ctx.fillStyle = '#000'; ctx.fillRect(0, 0, canvas.width, canvas.height); }
function pos(e) {
  const r = canvas.getBoundingClientRect();
  return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
}
clear();
canvas.style.touchAction = 'none';
canvas.addEventListener('pointerdown', e => { drawing = true; last = pos(e); canvas.setPointerCapture(e.pointerId); });
canvas.addEventListener('pointermove', e => {
  if (!drawing) return;
  const p = pos(e);
  ctx.strokeStyle = '#fff'; ctx.lineWidth = 20; ctx.lineCap = 'round'; ctx.lineJoin = 'round';
  ctx.beginPath(); ctx.moveTo(last[0], last[1]); ctx.lineTo(p[0], p[1]); ctx.stroke();
  last = p;
});
canvas.addEventListener('pointerup', () => {
  if (!drawing) return;
  drawing = false;
  trigger('submit', {image: canvas.toDataURL('image/png')});
});
element.querySelector('.digit-clear').addEventListener('click', () => { clear(); trigger('clear'); });
