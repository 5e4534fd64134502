(...inputs) => {
  // On a narrow screen the result comes below the button: bring the button to the top, with
  // room under it, so the caption appears where the eye already is.
  const results = document.querySelector('#caption-results');
  const button = document.querySelector('#caption-button');
  if (results && button && window.innerWidth < 768) {
    results.style.minHeight = Math.round(window.innerHeight * 0.85) + 'px';
    window.scrollTo({top: window.scrollY + button.getBoundingClientRect().top - 8, behavior: 'instant'});
  }
  return inputs;
}
