// Keeps a deployment's page live: asks for its state every few seconds and updates the
// aggregate, the counts and each target's row in place (text only), until it has ended.
"use strict";

const DEPLOYMENT_REFRESH_MS = 2000;

function countsText(counts) {
  return Object.keys(counts).sort().map((state) => `${counts[state]} ${state}`).join(", ");
}

function showDeployment(view) {
  const aggregate = document.getElementById("aggregate");
  aggregate.textContent = view.state;
  aggregate.className = `state ${view.state}`;
  document.getElementById("counts").textContent = countsText(view.counts);
  document.getElementById("offline").textContent = view.offline.length
    ? `Waiting for targets that are offline: ${view.offline.join(", ")}` : "";
  for (const target of view.targets) {
    const row = document.querySelector(`tr[data-task="${CSS.escape(target.task_id)}"]`);
    if (!row) continue;
    const state = row.querySelector("td.state");
    state.textContent = target.state;
    state.className = `state ${target.state}`;
    const connected = row.querySelector("td.connected");
    connected.textContent = target.connected ? "yes" : "no";
    connected.className = `connected ${target.connected ? "yes" : "no"}`;
    row.querySelector("td.reason").textContent = target.reason || "";
  }
}

async function refreshDeployment(panel) {
  const response = await fetch(panel.dataset.source, { credentials: "same-origin" });
  if (response.status === 401) {
    window.location.assign("/portal/sign-in");
    return false;
  }
  if (!response.ok) return true;
  const view = await response.json();
  showDeployment(view);
  return view.state === "running";
}

document.addEventListener("DOMContentLoaded", () => {
  const panel = document.getElementById("deployment");
  if (!panel) return;
  const again = async () => {
    const running = await refreshDeployment(panel).catch(() => true);
    if (running) setTimeout(again, DEPLOYMENT_REFRESH_MS);
  };
  setTimeout(again, DEPLOYMENT_REFRESH_MS);
});
