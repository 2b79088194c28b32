// The dashboard is served next to the API: /graphql (HTTP and websocket) is proxied to
// the agentplane server at AGENTPLANE_URL (default http://127.0.0.1:8000), in `vite` and
// in `vite preview` alike, so the browser talks to one origin.
import { defineConfig } from 'vite';

const target = process.env.AGENTPLANE_URL || 'http://127.0.0.1:8000';
const proxy = { '/graphql': { target, ws: true, changeOrigin: true } };

export default defineConfig({
  server: { host: '127.0.0.1', proxy },
  preview: { host: '127.0.0.1', proxy },
  build: { outDir: 'dist', sourcemap: true },
});
