import { useState } from "react";

// A reply's generation receipt: one compact line, every value on click.
// `props` is injected by Chainlit: { summary, receipt, labels }.
export default function Receipt() {
  const [open, setOpen] = useState(false);
  const receipt = props.receipt || {};
  const labels = props.labels || {};
  const sampling = receipt.sampling || {};
  const named = props.sampling_labels || {}; // receipts stored before had none: their keys
  const rows = [
    [labels.backend || "backend", props.backend_text || receipt.backend],
    [labels.model || "model", receipt.model],
    ...Object.entries(sampling).map(([k, v]) => [
      named[k] || k,
      (v === null ? "" : String(v)) +
        ((receipt.not_sent || []).includes(k) ? ` (${props.not_sent_text || "not sent"})` : ""),
    ]),
    [labels.prompt_tokens || "prompt tokens", receipt.prompt_tokens],
    [labels.completion_tokens || "completion tokens", receipt.completion_tokens],
    [labels.ttft || "time to first token (ms)", receipt.ttft_ms],
    [labels.speed || "tokens/s", receipt.tokens_per_second],
    [labels.duration || "duration (ms)", receipt.duration_ms],
    [labels.queued || "waited in line (ms)", receipt.queued_ms],
    [labels.finish || "finish", props.finish_text || receipt.finish_reason],
    [labels.created || "created", receipt.created_at],
  ].filter(([, v]) => v !== undefined && v !== null && v !== "");
  return (
    <div className="chatllm-receipt text-xs text-muted-foreground" data-finish={receipt.finish_reason}>
      {props.title ? <div className="chatllm-receipt-title font-medium">{props.title}</div> : null}
      <button
        type="button"
        className="text-left hover:underline"
        title={labels.toggle || "Show every value"}
        onClick={() => setOpen(!open)}
      >
        {props.summary}
      </button>
      {open && (
        <table className="mt-1 border-collapse">
          <tbody>
            {rows.map(([k, v]) => (
              <tr key={k}>
                <td className="pr-3 align-top font-medium">{k}</td>
                <td className="whitespace-pre-wrap break-all">{String(v)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}
