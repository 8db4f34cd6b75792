// Links into the Airflow UI (a[data-airflow-link]) open in the Airflow UI itself, not inside this frame.
// The UI shows this view in an iframe sandboxed without allow-top-navigation, so the frame may not navigate the
// page; it is same-origin, so it asks the UI's router to change route the way the browser's Back button does.
// Without a same-origin parent (the view opened on its own) the link simply navigates.
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-airflow-link]");
  if (!link || window.top === window || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) {
    return;
  }
  try {
    const top = window.top;
    const state = { usr: null, key: Math.random().toString(36).slice(2, 10), idx: (top.history.state?.idx ?? 0) + 1 };
    top.history.pushState(state, "", link.getAttribute("href"));
    top.dispatchEvent(new PopStateEvent("popstate", { state }));
    event.preventDefault();
  } catch (err) {
    // a parent of another origin: let the link navigate this frame
  }
});

// A campaign page follows its campaign while it can still change: every 2 s it reads progress.json, writes the
// ledger counts into the "Progress now" table, and reloads the page once the state changes, so the buttons, the
// reason and the charts match the new state (an action's result shows within one poll).
const FINISHED = new Set(["sent", "cancelled", "failed"]);
const head = document.querySelector("[data-progress-url]");
if (head && !FINISHED.has(head.dataset.status)) {
  const poll = async () => {
    try {
      const response = await fetch(head.dataset.progressUrl, { credentials: "same-origin", cache: "no-store" });
      if (response.ok) {
        const progress = await response.json();
        if (progress.status !== head.dataset.status) {
          window.location.replace(window.location.pathname);
          return;
        }
        for (const cell of document.querySelectorAll("[data-live]")) {
          const value = progress.counts[cell.dataset.live];
          if (value !== undefined) cell.textContent = String(value);
        }
      }
    } catch (err) {
      // the api-server restarting: try again at the next tick
    }
    setTimeout(poll, 2000);
  };
  setTimeout(poll, 2000);
}
