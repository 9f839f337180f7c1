// Keeps the fleet table's connection state (and health, last seen) live: asks the portal for the same page every few
// seconds and updates the cells in place (text only: nothing received becomes markup).
"use strict";

const REFRESH_MS = 3000;

async function refresh(table) {
  const response = await fetch(table.dataset.source, { credentials: "same-origin" });
  if (response.status === 401) {
    window.location.assign("/portal/sign-in");
    return;
  }
  if (!response.ok) return;
  for (const target of await response.json()) {
    const row = table.querySelector(`tr[data-name="${CSS.escape(target.name)}"]`);
    if (!row) continue;
    const cell = row.querySelector("td.connected");
    cell.textContent = target.connected ? "yes" : "no";
    cell.className = `connected ${target.connected ? "yes" : "no"}`;
    row.querySelector("td.last-seen").textContent = target.last_seen;
    row.querySelector("td.health").textContent = target.health;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("fleet");
  if (table) setInterval(() => refresh(table).catch(() => {}), REFRESH_MS);
});
