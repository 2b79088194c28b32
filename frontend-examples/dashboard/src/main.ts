// The dashboard: sign in, then three live panels. No framework: the DOM is small.
import { AuditEvents, ClusterSummary, ExecutionEvents } from './operations';
import type {
  AuditEventsSubscription,
  ClusterSummarySubscription,
  ExecutionEventsSubscription,
} from './gql/graphql';
import { Live, type State } from './live';
import { Session } from './session';

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const params = new URLSearchParams(window.location.search);
const reconnectMs = Number(params.get('reconnectMs') ?? 1000);

type Update = ExecutionEventsSubscription['executionEvents'];
interface Row {
  id: string;
  workflow: string;
  status: string;
  steps: Array<{ stepId: string; status: string }>;
  tokens: number;
  cost: number | null | undefined;
  lastSequence: number;
  events: number;
}

const rows = new Map<string, Row>();
const seen = new Set<string>(); // executionId:sequence
let lastEventAt: string | undefined;
let lastAuditSequence: number | undefined;

function setConnection(state: State, detail?: string) {
  const el = $('connection');
  el.dataset.state = state;
  el.textContent = state === 'reconnecting' ? 'reconnecting…' : state;
  el.title = detail ?? '';
  if (state === 'offline' && detail) showSignIn(`Signed out: ${detail}`);
}

function short(id: string) {
  try {
    return atob(id.replace(/-/g, '+').replace(/_/g, '/')).split(':')[1]?.slice(-8) ?? id;
  } catch {
    return id.slice(-8);
  }
}

function onExecution(u: Update) {
  const key = `${u.executionId}:${u.sequence}`;
  if (seen.has(key)) return;
  seen.add(key);
  if (!lastEventAt || u.at > lastEventAt) lastEventAt = u.at;
  const row = rows.get(u.executionId) ?? {
    id: u.executionId,
    workflow: '',
    status: u.status,
    steps: [],
    tokens: 0,
    cost: 0,
    lastSequence: 0,
    events: 0,
  };
  row.events += 1;
  if (u.sequence >= row.lastSequence) {
    row.lastSequence = u.sequence;
    row.status = u.status;
    const e = u.execution;
    if (e) {
      row.workflow = e.workflow?.name ?? row.workflow;
      row.steps = e.steps;
      row.tokens = e.promptTokens + e.completionTokens;
      row.cost = e.costUsd;
      // The execution as read now may be ahead of this event.
      row.status = e.status;
    }
  }
  rows.set(u.executionId, row);
  renderExecutions();
}

function renderExecutions() {
  const body = $('execution-rows');
  const sorted = [...rows.values()].sort((a, b) => (a.id < b.id ? 1 : -1)).slice(0, 50);
  body.replaceChildren(
    ...sorted.map((r) => {
      const tr = document.createElement('tr');
      tr.dataset.executionId = r.id;
      const done = r.steps.filter((s) => !['PENDING', 'RUNNING'].includes(s.status)).length;
      const cells = [
        `<code title="${r.id}">${short(r.id)}</code>`,
        r.workflow,
        r.status,
        `${done}/${r.steps.length}`,
        String(r.tokens),
        r.cost == null ? 'unknown' : `$${r.cost.toFixed(4)}`,
        String(r.events),
      ];
      tr.innerHTML = cells.map((c) => `<td>${c}</td>`).join('');
      const status = tr.children[2] as HTMLElement;
      status.className = 'status';
      status.dataset.status = r.status;
      (tr.children[1] as HTMLElement).textContent = r.workflow;
      return tr;
    }),
  );
}

function onCluster(c: ClusterSummarySubscription['clusterSummary']) {
  $('queue').textContent = `${c.queueDepth} queued (oldest ${c.oldestQueuedSeconds} s)`;
  $('nodes').textContent =
    c.nodesByStatus
      .filter((n) => n.count > 0)
      .map((n) => `${n.count} ${n.status.toLowerCase()}`)
      .join(', ') || 'none';
  $('gpus').textContent = String(c.gpusTotal);
  const total = Math.max(c.gpuMemoryTotalMb, 1);
  $('gpu-memory').textContent =
    `${c.gpuMemoryUsedMb} used, ${c.gpuMemoryReservedMb} reserved of ${c.gpuMemoryTotalMb} MiB`;
  $('gpu-used').style.width = `${(100 * c.gpuMemoryUsedMb) / total}%`;
  $('gpu-reserved').style.width = `${(100 * c.gpuMemoryReservedMb) / total}%`;
}

function onAudit(a: AuditEventsSubscription['auditEvents']) {
  if (lastAuditSequence !== undefined && a.sequence <= lastAuditSequence) return;
  lastAuditSequence = a.sequence;
  const li = document.createElement('li');
  li.dataset.sequence = String(a.sequence);
  li.innerHTML = `<span class="seq">#${a.sequence}</span><span class="action"></span>`;
  (li.querySelector('.action') as HTMLElement).textContent =
    `${a.action} · ${a.actorType.toLowerCase()} · ${a.outcome.toLowerCase()} · ${a.createdAt.slice(11, 19)}`;
  const list = $('audit-rows');
  list.prepend(li);
  while (list.children.length > 100) list.lastElementChild?.remove();
}

let live: Live | undefined;
let session: Session | undefined;

function showSignIn(message = '') {
  live?.stop();
  session?.close();
  $('board').hidden = true;
  $('sign-in').hidden = false;
  $('sign-in-error').textContent = message;
}

$('sign-in').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const email = $<HTMLInputElement>('email').value;
  const password = $<HTMLInputElement>('password').value;
  try {
    session = await Session.signIn(email, password, (why) => showSignIn(why));
  } catch (e) {
    $('sign-in-error').textContent = (e as Error).message;
    return;
  }
  $('sign-in').hidden = true;
  $('board').hidden = false;
  $('who').textContent = session.tokens.user.email;
  live = new Live(
    session,
    [
      {
        doc: ExecutionEvents,
        // Resume from the last event seen (the server replays from that time on; the
        // repeats it sends are dropped by executionId + sequence).
        variables: () => ({ since: lastEventAt ?? null }),
        next: (d: ExecutionEventsSubscription) => onExecution(d.executionEvents),
      },
      { doc: ClusterSummary, variables: () => ({}), next: (d: ClusterSummarySubscription) => onCluster(d.clusterSummary) },
      {
        doc: AuditEvents,
        variables: () => ({ after: lastAuditSequence ?? null }),
        next: (d: AuditEventsSubscription) => onAudit(d.auditEvents),
      },
    ],
    setConnection,
    reconnectMs,
  );
  live.start();
});
