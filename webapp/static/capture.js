const start = element.querySelector('.cam-start'), shot = element.querySelector('.cam-shot');
const video = element.querySelector('video');
let stream = null;
function stop() { if (stream) stream.getTracks().forEach(t => t.stop()); stream = null;
                  video.style.display = 'none'; shot.style.display = 'none'; start.style.display = ''; }
start.addEventListener('click', async () => {
  try { stream = await navigator.mediaDevices.getUserMedia({video: true}); }
  catch (e) { start.textContent = 'No webcam could be opened'; return; }
  video.srcObject = stream; video.style.display = 'block'; shot.style.display = ''; start.style.display = 'none';
});
shot.addEventListener('click', () => {
  const c = document.createElement('canvas');
  c.width = video.videoWidth || 640; c.height = video.videoHeight || 480;
  c.getContext('2d').drawImage(video, 0, 0, c.width, c.height);
  trigger('upload', {image: c.toDataURL('image/jpeg', 0.92), source: 'webcam'});
  stop();
});
document.addEventListener('paste', e => {
  const items = (e.clipboardData && e.clipboardData.items) || [];
  for (const item of items) {
    if (!item.type.startsWith('image/')) continue;
    const reader = new FileReader();
    reader.onload = () => trigger('upload', {image: reader.result, source: 'clipboard'});
    reader.readAsDataURL(item.getAsFile());
    e.preventDefault();
    break;
  }
});
