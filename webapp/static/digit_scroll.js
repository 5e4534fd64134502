() => {
  // The answer into view (on a phone it sits below the pad), moving the page no more than needed.
  const answer = document.querySelector('#digit-label');
  if (!answer) return;
  const box = answer.getBoundingClientRect(), wanted = Math.min(box.height, 160);
  if (box.top < 0) window.scrollBy({top: box.top - 8, behavior: 'instant'});
  else if (box.top + wanted > window.innerHeight) window.scrollBy({top: box.top + wanted - window.innerHeight + 8, behavior: 'instant'});
}
