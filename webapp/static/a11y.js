() => {
  // What Gradio 6.31 draws that axe-core (WCAG 2.1 A/AA) finds fault with, mended in place as
  // it appears (tests/test_browser_live.py runs axe on every tab):
  //  - the file box's upload button is named "Click to upload or drop files" while it reads
  //    "Drop File Here - or - Click to Upload" (label-content-name-mismatch): named by its text;
  //  - once a file is chosen, that button sits inside a second one named "common.upload" (an
  //    untranslated key; nested-interactive): the outer is named "Add photos" and passes its
  //    click on to the inner, which is no longer shown (a click on it is all it is for);
  //  - an empty output's placeholder is a div with an aria-label and no role (aria-prohibited-attr):
  //    given the role of an image, which is what it shows.
  function mend(root) {
    root.querySelectorAll('button.upload-container[aria-label]').forEach(b => {
      if (b.textContent.trim() && !b.closest('button.icon-button')) b.removeAttribute('aria-label');
    });
    root.querySelectorAll('button.icon-button').forEach(outer => {
      const inner = outer.querySelector('button.upload-container');
      if (!inner) return;
      inner.style.display = 'none';  // every pass: Gradio may draw a new one inside the same outer
      if (outer.getAttribute('aria-label') !== 'Add photos') {
        outer.setAttribute('aria-label', 'Add photos');
        outer.setAttribute('title', 'Add photos');
      }
      if (outer.dataset.mended) return;
      outer.dataset.mended = '1';
      outer.addEventListener('click', e => {  // the inner one of now, not the one first seen
        const now = outer.querySelector('button.upload-container');
        if (now && !now.contains(e.target)) now.click();
      });
    });
    root.querySelectorAll('div[aria-label]:not([role])').forEach(d => d.setAttribute('role', 'img'));
  }
  mend(document);
  new MutationObserver(() => mend(document)).observe(document.body, {childList: true, subtree: true});
}
