// Filter the unit cards of a layer page (and the dots of its map) by label text and sort the cards, in the page itself.
(function () {
  "use strict";
  const grid = document.getElementById("grid");
  const filter = document.getElementById("filter");
  const sort = document.getElementById("sort");
  const shown = document.getElementById("shown");
  if (!grid || !filter || !sort) { return; }
  const cards = Array.from(grid.querySelectorAll(".card"));
  const dots = Array.from(document.querySelectorAll("#unit-map .dot"));

  function number(card, key) {
    const value = parseFloat(card.dataset[key]);
    return Number.isNaN(value) ? -Infinity : value;
  }

  function update() {
    const text = filter.value.trim().toLowerCase();
    const key = sort.value;
    let visible = 0;
    for (const card of cards) {
      const match = text === "" || card.dataset.label.toLowerCase().includes(text);
      card.hidden = !match;
      if (match) { visible += 1; }
    }
    for (const dot of dots) {
      dot.classList.toggle("off", text !== "" && !dot.dataset.label.toLowerCase().includes(text));
    }
    const ordered = cards.slice().sort(function (a, b) {
      if (key === "unit") { return number(a, "unit") - number(b, "unit"); }
      const diff = number(b, key) - number(a, key);
      return diff !== 0 ? diff : number(a, "unit") - number(b, "unit");
    });
    for (const card of ordered) { grid.appendChild(card); }
    shown.textContent = visible + " shown";
  }

  filter.addEventListener("input", update);
  sort.addEventListener("change", update);
})();
