import { useState } from "react";

// ‹ n/m › under a message that has other versions (an edited message, a regenerated
// reply). The arrows open the version before or after, through the app's action (the
// branch is saved at once, and the page shows its path). `props` is injected by Chainlit:
// { at, of, previous, next, action, label, previous_label, next_label }.
export default function Branches() {
  const [busy, setBusy] = useState(false);
  const go = async (to) => {
    if (!to || busy) return;
    setBusy(true);
    try {
      await callAction({ name: props.action, payload: { to } });
    } finally {
      setBusy(false);
    }
  };
  const arrow = "inline-flex h-7 w-7 items-center justify-center rounded hover:bg-muted disabled:opacity-40 disabled:hover:bg-transparent";
  return (
    <div
      className="chatllm-branches inline-flex items-center gap-1 text-xs text-muted-foreground"
      role="group"
      aria-label={props.label}
    >
      <button
        type="button"
        className={arrow}
        aria-label={props.previous_label}
        title={props.previous_label}
        disabled={!props.previous || busy}
        onClick={() => go(props.previous)}
      >
        ‹
      </button>
      <span aria-hidden="true">{props.at}/{props.of}</span>
      <button
        type="button"
        className={arrow}
        aria-label={props.next_label}
        title={props.next_label}
        disabled={!props.next || busy}
        onClick={() => go(props.next)}
      >
        ›
      </button>
    </div>
  );
}
