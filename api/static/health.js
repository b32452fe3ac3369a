// Every page: a banner while lrtune serve's embedded workers have exited (GET /readyz), so
// that jobs waiting forever say why, and the "Log in" link only where the server has a token
// (/readyz's auth). /readyz needs no token.
const POLL_MS = 5000;
const banner = document.getElementById("service-warning");
const login = document.getElementById("login-link");

async function check() {
  try {
    const response = await fetch("/readyz", { headers: { Accept: "application/json" } });
    const ready = await response.json();
    if (login) login.hidden = !ready.auth;
    const running = ready.embedded_workers_running;
    const dead = ready.embedded_workers !== null && ready.embedded_workers !== undefined
      && running < ready.embedded_workers;
    banner.textContent = dead ? (ready.detail || ready.note) : "";
    banner.hidden = !dead;
  } catch {
    // the server is gone or restarting: the pages' own calls say so
  }
}

if (banner) {
  check();
  setInterval(() => { if (!document.hidden) check(); }, POLL_MS);
}
