// The live feeds over one graphql-transport-ws socket, resumable: each feed keeps a
// cursor (executions: the `at` of the last event; audit: the last sequence), and after a
// lost connection the dashboard opens a new socket and subscribes again from those
// cursors, so nothing published meanwhile is missed. Repeats are dropped by key.
import { createClient, type Client } from 'graphql-ws';
import { print } from 'graphql';
import type { TypedDocumentNode } from '@graphql-typed-document-node/core';
import type { Session } from './session';

export type State = 'offline' | 'live' | 'reconnecting';

export interface Feed<R, V> {
  doc: TypedDocumentNode<R, V>;
  /** Variables for the next (re)subscription, from the feed's cursor. */
  variables: () => V;
  next: (data: R) => void;
}

export class Live {
  private client: Client | undefined;
  private socket: WebSocket | undefined;
  private stopped = false;
  private retry: ReturnType<typeof setTimeout> | undefined;

  constructor(
    private session: Session,
    private feeds: Array<Feed<any, any>>,
    private onState: (s: State, detail?: string) => void,
    private reconnectMs = 1_000,
  ) {
    // A refreshed token reaches the open socket in a ping (no reconnect needed).
    session.onRefresh((t) => {
      if (this.socket?.readyState === WebSocket.OPEN) {
        this.socket.send(
          JSON.stringify({ type: 'ping', payload: { Authorization: `Bearer ${t.accessToken}` } }),
        );
      }
    });
  }

  start() {
    this.stopped = false;
    const url = new URL('/graphql/ws', window.location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const client = createClient({
      url: url.toString(),
      lazy: false,
      retryAttempts: 0,
      keepAlive: 10_000,
      connectionParams: () => ({ Authorization: `Bearer ${this.session.token}` }),
      on: {
        connected: (socket) => {
          this.socket = socket as WebSocket;
          this.onState('live');
        },
        closed: (event) => {
          if (client !== this.client) return;
          const e = event as CloseEvent;
          this.socket = undefined;
          if (this.stopped) return;
          if (e.code === 4401 || e.code === 4403) {
            this.onState('offline', e.reason);
            return;
          }
          this.onState('reconnecting', e.reason || `closed (${e.code})`);
          this.scheduleRestart();
        },
      },
    });
    this.client = client;
    for (const feed of this.feeds) {
      client.subscribe(
        { query: print(feed.doc), variables: feed.variables() },
        {
          next: (r) => {
            if (r.data) feed.next(r.data);
          },
          error: () => {
            /* the socket's `closed` handler reconnects */
          },
          complete: () => {},
        },
      );
    }
  }

  private scheduleRestart() {
    clearTimeout(this.retry);
    this.retry = setTimeout(() => {
      void this.client?.dispose();
      this.client = undefined;
      if (!this.stopped) this.start();
    }, this.reconnectMs);
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retry);
    void this.client?.dispose();
  }
}
