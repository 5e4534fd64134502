() => {
  // The caption (or the one sentence saying what went wrong) into view, if it is not.
  const shown = document.querySelector('#caption-output .caption, #caption-output .note, #caption-output .err');
  if (!shown) return;
  const box = shown.getBoundingClientRect();
  if (box.top < 0 || box.bottom > window.innerHeight) shown.scrollIntoView({block: 'center', behavior: 'instant'});
}
