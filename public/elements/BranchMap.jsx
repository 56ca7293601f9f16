import { useState } from "react";

// The branch map: every branch of the conversation on one line (where it parts from the
// others and its first words, how many messages, when it last grew, the model and
// sampling of its last reply), indented by the forks above it; a click (or Enter) opens
// that branch through the app's action. One flat list, however deep the tree.
// `props` is injected by Chainlit: { rows: [{ id, label, kind, depth, messages, when,
// settings, current }], action, label, open_label, current_label }.
export default function BranchMap() {
  const [busy, setBusy] = useState(false);
  const open = async (to) => {
    if (busy) return;
    setBusy(true);
    try {
      await callAction({ name: props.action, payload: { to } });
    } finally {
      setBusy(false);
    }
  };
  return (
    <ul className="chatllm-branch-map flex flex-col gap-1 text-sm" aria-label={props.label}>
      {(props.rows || []).map((row) => (
        <li key={row.id} style={{ paddingLeft: `${Math.min(row.depth, 8) * 1.25}rem` }}>
          <button
            type="button"
            className="w-full rounded border px-2 py-1 text-left hover:bg-muted disabled:opacity-60"
            aria-current={row.current ? "true" : undefined}
            title={props.open_label}
            disabled={busy}
            onClick={() => open(row.id)}
          >
            <span className="font-medium">{row.label}</span>
            {row.current ? (
              <span className="ml-2 rounded bg-muted px-1 text-xs">{props.current_label}</span>
            ) : null}
            <span className="block text-xs text-muted-foreground">
              {[row.kind, row.messages, row.when, row.settings].filter(Boolean).join(" · ")}
            </span>
          </button>
        </li>
      ))}
    </ul>
  );
}
