import { useState } from "react";

// ‹ n/m › under a message that has other versions (an edited message, a regenerated
// reply). The arrows open the version before or after, through the app's action (the
// branch is saved at once, and the page shows its path); the bin asks the app to delete
// this version with everything after it (the app asks the person to confirm first).
// `props` is injected by Chainlit: { at, of, previous, next, node, action, label,
// previous_label, next_label, delete_action, delete_label }.
export default function Branches() {
  const [busy, setBusy] = useState(false);
  const call = async (name, payload) => {
    if (busy) return;
    setBusy(true);
    try {
      await callAction({ name, payload });
    } finally {
      setBusy(false);
    }
  };
  const go = (to) => to && call(props.action, { to });
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
      {props.delete_action ? (
        <button
          type="button"
          className={arrow + " chatllm-branch-delete"}
          aria-label={props.delete_label}
          title={props.delete_label}
          disabled={busy}
          onClick={() => call(props.delete_action, { node: props.node })}
        >
          <svg aria-hidden="true" width="14" height="14" viewBox="0 0 24 24" fill="none"
            stroke="currentColor" strokeWidth="2" strokeLinecap="round" strokeLinejoin="round">
            <path d="M3 6h18M8 6V4h8v2M19 6l-1 14H6L5 6" />
          </svg>
        </button>
      ) : null}
    </div>
  );
}
