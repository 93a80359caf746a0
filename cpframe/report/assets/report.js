// cpframe report: after the page has loaded, mark every image as loaded or not
// (data-loaded="1"/"0") and record the counts on <body> (data-images-ok / -total),
// so a headless browser's --dump-dom shows whether the report renders.
(function () {
  function check() {
    var imgs = document.images, ok = 0;
    for (var i = 0; i < imgs.length; i++) {
      var good = imgs[i].complete && imgs[i].naturalWidth > 0;
      imgs[i].setAttribute("data-loaded", good ? "1" : "0");
      if (good) { ok++; }
    }
    document.body.setAttribute("data-images-total", String(imgs.length));
    document.body.setAttribute("data-images-ok", String(ok));
    // the page itself must not scroll sideways: wide tables scroll inside their own box
    var fits = document.documentElement.scrollWidth <= window.innerWidth + 1;
    document.body.setAttribute("data-fits-width", fits ? "1" : "0");
    document.body.setAttribute("data-checked", "1");
  }
  window.addEventListener("load", check);
})();
