// The index page's search box: units of every layer found by their concept's name or one of its synonyms,
// from the static index static/search-index.js (window.NEURON_CATALOG_SEARCH). No server.
(function () {
  "use strict";
  const index = window.NEURON_CATALOG_SEARCH;
  const box = document.getElementById("search");
  const category = document.getElementById("search-category");
  const results = document.getElementById("search-results");
  const count = document.getElementById("search-count");
  if (!index || !box || !results) { return; }
  const LIMIT = 200;

  function matches(unit, text) {
    if (unit.label.toLowerCase().includes(text)) { return true; }
    return (index.synonyms[unit.label] || []).some(function (s) { return s.toLowerCase().includes(text); });
  }

  function update() {
    const text = box.value.trim().toLowerCase();
    const cat = category ? category.value : "";
    results.replaceChildren();
    if (text === "" && cat === "") { count.textContent = ""; return; }
    const found = index.units.filter(function (u) {
      return (cat === "" || u.category === cat) && (text === "" || matches(u, text));
    });
    found.sort(function (a, b) { return (b.iou || 0) - (a.iou || 0); });
    for (const u of found.slice(0, LIMIT)) {
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.href = u.href;
      link.textContent = u.layer + " unit " + u.unit;
      item.appendChild(link);
      const syns = index.synonyms[u.label] || [];
      item.appendChild(document.createTextNode(" " + u.label + (syns.length ? " (" + syns.join(", ") + ")" : "") +
        ", " + u.category + ", IoU " + (u.iou === null ? "-" : u.iou) + (u.interpretable ? "" : " (below the threshold)")));
      results.appendChild(item);
    }
    count.textContent = found.length + " unit" + (found.length === 1 ? "" : "s") +
      (found.length > LIMIT ? ", the " + LIMIT + " with the highest IoU shown" : "");
  }

  if (category) {
    for (const name of index.categories) {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      category.appendChild(option);
    }
    category.addEventListener("change", update);
  }
  box.addEventListener("input", update);
  update();
}());
