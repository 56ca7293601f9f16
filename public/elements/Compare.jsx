import { useState } from "react";

// One message under several settings, side by side, with a word-level diff of any two
// replies. `props` is injected by Chainlit (see chatllm/compare.py comparison_view).
export default function Compare() {
  const columns = props.columns || [];
  const labels = props.labels || {};
  const [left, setLeft] = useState(0);
  const [right, setRight] = useState(columns.length > 1 ? 1 : 0);

  const pair = () => {
    if (left === right) return { pieces: null, similarity: 1 };
    const [a, b] = left < right ? [left, right] : [right, left];
    const key = `${a}-${b}`;
    let pieces = (props.diffs || {})[key] || null;
    if (pieces && left > right) {
      // Stored as edits from the lower column to the higher; flip for the other way.
      pieces = pieces.map(([op, text]) => [op === "-" ? "+" : op === "+" ? "-" : op, text]);
    }
    return { pieces, similarity: (props.similarity || {})[key] };
  };
  const { pieces, similarity } = pair();
  // Side by side where each column gets at least 12rem, stacked where it would not (a
  // phone): three 100-px columns broke words mid-word. `min(100%, …)` lets a single
  // column shrink to a narrow screen.
  const track = "minmax(min(100%, 12rem), 1fr)";

  return (
    <div className="chatllm-compare flex flex-col gap-3 w-full">
      <div
        className="grid gap-3"
        style={{ gridTemplateColumns: `repeat(auto-fit, ${track})` }}
      >
        {columns.map((column, index) => (
          <div
            key={index}
            className="chatllm-compare-column rounded-md border p-3 flex flex-col gap-2 min-w-0"
            data-index={index}
          >
            <div className="font-semibold text-sm">{column.label}</div>
            {column.error ? (
              <div className="text-sm text-red-600 whitespace-pre-wrap">{column.error}</div>
            ) : null}
            <div className="chatllm-compare-text text-sm whitespace-pre-wrap break-words">
              {column.text || (props.done ? "" : labels.running || "…")}
            </div>
            {column.summary ? (
              <div className="chatllm-compare-receipt text-xs text-muted-foreground">
                {column.summary}
              </div>
            ) : null}
          </div>
        ))}
      </div>
      {props.done && columns.length > 1 ? (
        <div className="chatllm-diff rounded-md border p-3 flex flex-col gap-2">
          <div className="flex flex-wrap items-center gap-2 text-sm">
            <span className="font-semibold">{labels.diff || "Word diff"}</span>
            <select
              className="chatllm-diff-left rounded border bg-background px-1"
              value={left}
              onChange={(e) => setLeft(Number(e.target.value))}
            >
              {columns.map((c, i) => (
                <option key={i} value={i}>{c.label}</option>
              ))}
            </select>
            <span>→</span>
            <select
              className="chatllm-diff-right rounded border bg-background px-1"
              value={right}
              onChange={(e) => setRight(Number(e.target.value))}
            >
              {columns.map((c, i) => (
                <option key={i} value={i}>{c.label}</option>
              ))}
            </select>
            {typeof similarity === "number" ? (
              <span className="text-xs text-muted-foreground">
                {(labels.similarity || "words in common")}: {Math.round(similarity * 100)}%
              </span>
            ) : null}
          </div>
          <div className="chatllm-diff-text text-sm whitespace-pre-wrap break-words">
            {pieces === null
              ? labels.same || "Pick two different replies."
              : pieces.map(([op, text], i) =>
                  op === "=" ? (
                    <span key={i}>{text}</span>
                  ) : op === "-" ? (
                    <del key={i} className="bg-red-500/20 text-red-700 dark:text-red-300">{text}</del>
                  ) : (
                    <ins key={i} className="bg-green-500/20 text-green-700 dark:text-green-300 no-underline">{text}</ins>
                  )
                )}
          </div>
        </div>
      ) : null}
    </div>
  );
}
