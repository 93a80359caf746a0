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
    // focal-plane mosaics must use the page, not sit as thumbnails: the narrowest one's share of <main>
    var main = document.querySelector("main"), mosaics = document.querySelectorAll("figure.mosaic img");
    if (main && mosaics.length) {
      var inner = main.clientWidth, least = 1;
      for (var j = 0; j < mosaics.length; j++) { least = Math.min(least, mosaics[j].getBoundingClientRect().width / inner); }
      document.body.setAttribute("data-mosaic-share", least.toFixed(2));
    }
    // plots of one section sit side by side, two to a row, not stacked in a half-empty column: a
    // section's one mosaic has its first two plots beside it (it spans their two rows); without a
    // mosaic the first two plots share a row; and no figure but the last sits alone on its row
    var groups = document.querySelectorAll(".figures"), stacked = 0;
    function overlaps(a, b) {
      var ra = a.getBoundingClientRect(), rb = b.getBoundingClientRect();
      return ra.top < rb.bottom - 1 && rb.top < ra.bottom - 1;
    }
    for (var g = 0; g < groups.length; g++) {
      var all = groups[g].querySelectorAll("figure"), mosaics = groups[g].querySelectorAll("figure.mosaic");
      var figs = groups[g].querySelectorAll("figure:not(.mosaic)"), mosaic = mosaics.length === 1 ? mosaics[0] : null;
      if (mosaic) {
        for (var m = 0; m < Math.min(2, figs.length); m++) { if (!overlaps(mosaic, figs[m])) { stacked++; } }
      } else if (figs.length >= 2 && Math.abs(figs[0].getBoundingClientRect().top - figs[1].getBoundingClientRect().top) > 1) {
        stacked++;
      }
      for (var f = 0; f < all.length - 1; f++) {
        var alone = true;
        for (var o = 0; o < all.length; o++) { if (o !== f && overlaps(all[f], all[o])) { alone = false; } }
        if (alone && all.length > 1) { stacked++; }
      }
    }
    document.body.setAttribute("data-stacked-figures", String(stacked));
    // a column name may break after an underscore, never inside a word: count the headers
    // whose text runs onto more lines than it has parts (a squeezed, unreadable header)
    var ths = document.querySelectorAll("table.results th"), crushed = 0;
    for (var k = 0; k < ths.length; k++) {
      var walker = document.createTreeWalker(ths[k], NodeFilter.SHOW_TEXT), node, parts = 0, lines = 0;
      while ((node = walker.nextNode())) {
        if (!node.textContent.trim()) { continue; }
        var range = document.createRange();
        range.selectNodeContents(node);
        parts++;
        lines += range.getClientRects().length;
      }
      if (lines > parts) { crushed++; }
    }
    document.body.setAttribute("data-crushed-headers", String(crushed));
    document.body.setAttribute("data-checked", "1");
  }
  window.addEventListener("load", check);
})();
