// Sign-in and a session that refreshes itself before the access token expires.
import { print } from 'graphql';
import type { TypedDocumentNode } from '@graphql-typed-document-node/core';
import { Login, Refresh } from './operations';

export interface Tokens {
  accessToken: string;
  accessTokenExpiresAt: string;
  refreshToken: string;
  user: { email: string };
}

export class GraphQLRequestError extends Error {
  constructor(message: string, readonly code?: string, readonly reason?: string) {
    super(message);
  }
}

/** One GraphQL request over HTTP (same origin: /graphql). */
export async function request<R, V>(
  doc: TypedDocumentNode<R, V>,
  variables: V,
  token?: string,
): Promise<R> {
  const res = await fetch('/graphql', {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      accept: 'application/graphql-response+json, application/json',
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: JSON.stringify({ query: print(doc), variables }),
  });
  const body = await res.json();
  if (body.errors?.length) {
    const e = body.errors[0];
    throw new GraphQLRequestError(e.message, e.extensions?.code, e.extensions?.reason);
  }
  return body.data as R;
}

/** Holds the tokens; refreshes a minute before expiry (or at 80 % of a short life). */
export class Session {
  private timer: ReturnType<typeof setTimeout> | undefined;
  private listeners: Array<(t: Tokens) => void> = [];

  private constructor(public tokens: Tokens, private onExpired: (why: string) => void) {
    this.schedule();
  }

  static async signIn(email: string, password: string, onExpired: (why: string) => void) {
    const data = await request(Login, { i: { email, password } });
    return new Session(data.login, onExpired);
  }

  get token() {
    return this.tokens.accessToken;
  }

  /** Called with the new tokens after every refresh. */
  onRefresh(f: (t: Tokens) => void) {
    this.listeners.push(f);
  }

  private schedule() {
    clearTimeout(this.timer);
    const left = Date.parse(this.tokens.accessTokenExpiresAt) - Date.now();
    const wait = Math.max(1_000, Math.min(left - 60_000, left * 0.8));
    this.timer = setTimeout(() => void this.refresh(), wait);
  }

  async refresh() {
    try {
      const data = await request(Refresh, { i: { refreshToken: this.tokens.refreshToken } });
      this.tokens = data.refreshSession;
      this.schedule();
      for (const f of this.listeners) f(this.tokens);
    } catch (e) {
      if (e instanceof GraphQLRequestError && e.code === 'UNAUTHENTICATED') {
        this.onExpired(e.message);
      } else {
        // The server is unreachable: try again shortly.
        this.timer = setTimeout(() => void this.refresh(), 5_000);
      }
    }
  }

  close() {
    clearTimeout(this.timer);
  }
}
