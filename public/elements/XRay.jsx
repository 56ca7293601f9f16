import { useEffect, useMemo, useState } from "react";

// The sampling X-ray of one reply (issue 27): its tokens coloured by how sure the model
// was; a token's candidates, with their probability before and after the samplers and
// which stage cut each; sliders that move the cuts live, with no model call.
// `props` is injected by Chainlit: { url, sampling, labels, stages }.

// ---- the chain (a port of chatllm/xray/chain.py; tests/test_xray_view.py runs both)
const CHAIN = (() => {
  const softmax = (logits) => {
    if (!logits.length) return [];
    const top = Math.max(...logits);
    const weights = logits.map((x) => Math.exp(x - top));
    let total = 0;
    for (const w of weights) total += w;
    return weights.map((w) => w / total);
  };
  const byLogit = (cs) => [...cs].sort((a, b) => b.logit - a.logit);
  const penalized = (cs, history, s) => {
    const repeat = s.repeat_penalty, frequency = s.frequency_penalty, presence = s.presence_penalty;
    if (repeat === 1 && frequency === 0 && presence === 0) return [...cs];
    const counts = new Map();
    for (const token of history) counts.set(token, (counts.get(token) || 0) + 1);
    return cs.map((c) => {
      const seen = counts.get(c.id) || 0;
      if (!seen) return c;
      const logit = c.logit <= 0 ? c.logit * repeat : c.logit / repeat;
      return { id: c.id, logit: logit - seen * frequency - presence };
    });
  };
  const topK = (cs, k) => (k <= 0 ? [...cs] : byLogit(cs).slice(0, Math.min(k, cs.length)));
  const typical = (cs, p, minKeep = 1) => {
    if (p >= 1 || !cs.length) return [...cs];
    const ordered = byLogit(cs);
    const probs = softmax(ordered.map((c) => c.logit));
    let entropy = 0;
    for (const q of probs) if (q > 0) entropy += -q * Math.log(q);
    const shifted = probs.map((q) => (q > 0 ? Math.abs(-Math.log(q) - entropy) : Infinity));
    const order = ordered.map((_, i) => i).sort((a, b) => shifted[a] - shifted[b] || a - b);
    let total = 0;
    let last = order.length;
    for (let n = 0; n < order.length; n++) {
      total += probs[order[n]];
      if (total > p && n >= minKeep - 1) {
        last = n + 1;
        break;
      }
    }
    return order.slice(0, last).map((i) => ordered[i]);
  };
  const topP = (cs, p, minKeep = 1) => {
    if (p >= 1 || !cs.length) return [...cs];
    const ordered = byLogit(cs);
    const probs = softmax(ordered.map((c) => c.logit));
    let total = 0;
    for (let n = 0; n < probs.length; n++) {
      total += probs[n];
      if (total >= p && n + 1 >= minKeep) return ordered.slice(0, n + 1);
    }
    return ordered;
  };
  const minP = (cs, p, minKeep = 1) => {
    if (p <= 0 || !cs.length) return [...cs];
    const floor = Math.max(...cs.map((c) => c.logit)) + Math.log(p);
    const kept = cs.filter((c) => c.logit >= floor);
    if (kept.length >= minKeep) return kept;
    return byLogit(cs).slice(0, Math.max(minKeep, 1));
  };
  // -> { mode, kept: {stage: [ids]}, cutBy: {id: stage}, probabilities: {id: p} }
  const run = (candidates, s, history = []) => {
    const after = penalized(candidates, history, s);
    const kept = { penalties: after.map((c) => c.id) };
    const probs = (cs, t = 1) => {
      const ps = softmax(cs.map((c) => c.logit / t));
      return Object.fromEntries(cs.map((c, i) => [c.id, ps[i]]));
    };
    if (s.temperature < 0) return { mode: "draw", kept, cutBy: {}, probabilities: probs(after) };
    if (s.temperature === 0) {
      const best = after.length ? byLogit(after)[0].id : null;
      const cutBy = {};
      for (const c of after) if (c.id !== best) cutBy[c.id] = "greedy";
      return { mode: "greedy", kept, cutBy, probabilities: best === null ? {} : { [best]: 1 } };
    }
    if (s.mirostat_mode === 1 || s.mirostat_mode === 2) {
      return { mode: "mirostat", kept, cutBy: {}, probabilities: probs(after) };
    }
    const cutBy = {};
    let current = after;
    const stages = [
      ["top_k", (cs) => topK(cs, s.top_k)],
      ["typical_p", (cs) => typical(cs, s.typical_p)],
      ["top_p", (cs) => topP(cs, s.top_p)],
      ["min_p", (cs) => minP(cs, s.min_p)],
    ];
    for (const [stage, apply] of stages) {
      const left = apply(current);
      const ids = new Set(left.map((c) => c.id));
      for (const c of current) if (!ids.has(c.id)) cutBy[c.id] = stage;
      kept[stage] = left.map((c) => c.id);
      current = left;
    }
    return { mode: "sample", kept, cutBy, probabilities: probs(current, s.temperature) };
  };
  return { run, softmax };
})();
// ---- end of the chain

const PENALTY_WINDOW = 64; // llama-cpp-python counts the last 64 tokens drawn

// Bytes to text: a character split over several tokens (often Chinese) is shown once,
// over the tokens that make it.
const decoder = () => new TextDecoder("utf-8", { fatal: true });
function groups(tokens, pieces) {
  const out = [];
  let pending = [];
  let bytes = [];
  for (let i = 0; i < tokens.length; i++) {
    const hex = (pieces[String(tokens[i].id)] || {}).hex || "";
    for (let j = 0; j < hex.length; j += 2) bytes.push(parseInt(hex.slice(j, j + 2), 16));
    pending.push(i);
    try {
      const text = decoder().decode(new Uint8Array(bytes));
      out.push({ text, tokens: pending });
      pending = [];
      bytes = [];
    } catch (_) {
      if (bytes.length > 12) {
        out.push({ text: "\ufffd", tokens: pending });
        pending = [];
        bytes = [];
      }
    }
  }
  if (pending.length) out.push({ text: "\ufffd", tokens: pending });
  return out;
}

const shown = (text) => (text === "" ? "∅" : text.replace(/\n/g, "⏎").replace(/ /g, "␣"));
const pct = (p) => (p >= 0.995 ? "100%" : p < 0.001 ? "<0.1%" : `${(p * 100).toFixed(1)}%`);
// Sure tokens stay plain; the less sure, the warmer (never so strong that the text on it
// loses its contrast, in the light theme or the dark).
const shade = (p) => `hsla(${Math.round(45 * p)}, 90%, 55%, ${(0.5 * (1 - p)).toFixed(2)})`;

export default function XRay() {
  const labels = props.labels || {};
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  const [picked, setPicked] = useState(null);
  const [sampling, setSampling] = useState(props.sampling || {});

  useEffect(() => {
    const root = (document.querySelector('meta[property="og:root_path"]')?.content || "")
      .replace(/\/$/, "");
    fetch(root + props.url, { credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error(String(r.status)))))
      .then(setData)
      .catch((e) => setError(e.message));
  }, []);

  const tokens = data ? data.tokens : [];
  const pieces = data ? data.pieces : {};
  const spans = useMemo(() => groups(tokens, pieces), [data]);
  const pieceOf = (id) => (pieces[String(id)] || {}).text ?? "";

  const summary = useMemo(() => {
    if (!tokens.length) return null;
    let bits = 0;
    let close = 0;
    for (const t of tokens) {
      bits += -t.logprob / Math.LN2;
      const [first, second] = t.candidates;
      if (first && second && Math.exp(second[1]) * 2 >= Math.exp(first[1])) close += 1;
    }
    return { bits: bits / tokens.length, close };
  }, [data]);

  if (error) return <div className="chatllm-xray text-sm">{labels.unavailable} ({error})</div>;
  if (!data) return <div className="chatllm-xray text-sm">{labels.loading}</div>;

  const chainFor = (index) => {
    const token = tokens[index];
    const history = tokens.slice(Math.max(0, index - PENALTY_WINDOW), index).map((t) => t.id);
    const candidates = token.candidates.map(([id, logprob]) => ({ id, logit: logprob }));
    return CHAIN.run(candidates, sampling, history);
  };
  const keptCount = (index) => Object.keys(chainFor(index).probabilities).length;
  const sliders = [
    ["temperature", 0, 2, 0.05],
    ["top_k", 0, data.top, 1],
    ["top_p", 0, 1, 0.01],
    ["min_p", 0, 1, 0.01],
    ["typical_p", 0, 1, 0.01],
  ];
  const group = picked === null ? null : spans[picked];

  return (
    <div className="chatllm-xray mt-2 rounded-md border p-3 text-sm" lang={props.lang}>
      <div className="chatllm-xray-summary font-medium">
        {summary &&
          labels.summary
            ?.replace("{bits}", summary.bits.toFixed(2))
            .replace("{close}", String(summary.close))
            .replace("{count}", String(tokens.length))}
      </div>
      <div className="chatllm-xray-legend mt-1 flex items-center gap-2 text-xs" aria-hidden="true">
        <span>{labels.sure}</span>
        {[1, 0.75, 0.5, 0.25, 0].map((p) => (
          <span key={p} style={{ background: shade(p) }} className="inline-block h-3 w-6 rounded" />
        ))}
        <span>{labels.unsure}</span>
      </div>
      <p className="chatllm-xray-tokens mt-2 leading-7" role="group" aria-label={labels.tokens}>
        {spans.map((span, n) => {
          const p = Math.min(...span.tokens.map((i) => Math.exp(tokens[i].logprob)));
          return (
            <button
              key={n}
              type="button"
              className={"chatllm-xray-token rounded px-0.5 " + (picked === n ? "ring-2 ring-primary" : "")}
              style={{ background: shade(p), whiteSpace: "pre-wrap" }}
              aria-pressed={picked === n}
              aria-label={`${shown(span.text)} ${pct(p)}`}
              title={pct(p)}
              onClick={() => setPicked(picked === n ? null : n)}
            >
              {span.text.replace(/\n/g, "⏎")}
            </button>
          );
        })}
      </p>
      <fieldset className="chatllm-xray-sliders mt-3 grid grid-cols-1 gap-2 sm:grid-cols-2">
        <legend className="font-medium">{labels.settings}</legend>
        {sliders.map(([name, min, max, step]) => (
          <label key={name} className="flex items-center gap-2">
            <span className="w-28">{(props.names || {})[name] || name}</span>
            <input
              type="range"
              name={name}
              min={min}
              max={max}
              step={step}
              value={sampling[name] ?? 0}
              onChange={(e) => setSampling({ ...sampling, [name]: Number(e.target.value) })}
            />
            <output className="w-12 text-right">{sampling[name]}</output>
          </label>
        ))}
        <button
          type="button"
          className="chatllm-xray-reset justify-self-start rounded border px-2"
          onClick={() => setSampling(props.sampling || {})}
        >
          {labels.reset}
        </button>
      </fieldset>
      {group &&
        group.tokens.map((index) => {
          const outcome = chainFor(index);
          const token = tokens[index];
          const before = token.candidates.map(([, lp]) => Math.exp(lp));
          return (
            <table key={index} className="chatllm-xray-candidates mt-3 w-full border-collapse text-xs">
              <caption className="text-left font-medium">
                {labels.token?.replace("{token}", shown(pieceOf(token.id)))} ·{" "}
                {labels.kept?.replace("{count}", String(keptCount(index)))}
                {outcome.mode !== "sample" ? ` · ${labels["mode_" + outcome.mode]}` : ""}
              </caption>
              <thead>
                <tr>
                  <th scope="col" className="text-left">{labels.candidate}</th>
                  <th scope="col" className="text-right">{labels.before}</th>
                  <th scope="col" className="text-right">{labels.after}</th>
                  <th scope="col" className="text-left pl-3">{labels.stage}</th>
                </tr>
              </thead>
              <tbody>
                {token.candidates.map(([id], n) => {
                  const after = outcome.probabilities[id];
                  const cut = outcome.cutBy[id];
                  return (
                    <tr
                      key={n}
                      data-kept={after !== undefined}
                      className={(id === token.id ? "font-semibold " : "") + (cut ? "text-muted-foreground" : "")}
                    >
                      <td>{shown(pieceOf(id))}{id === token.id ? ` ← ${labels.drawn}` : ""}</td>
                      <td className="text-right">{pct(before[n])}</td>
                      <td className="text-right">{after === undefined ? "—" : pct(after)}</td>
                      <td className="pl-3">{cut ? (props.stages || {})[cut] || cut : labels.kept_mark}</td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          );
        })}
    </div>
  );
}
