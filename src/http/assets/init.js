// Boots GraphiQL against this server. Served by the binary; no external resources.
//
// Queries and mutations go over HTTP with the headers typed in GraphiQL's Headers pane.
// Subscriptions go over the websocket, which authenticates in `connection_init`: the same
// pane's Authorization header is sent there. A socket lives as long as that header stays
// the same; typing another token opens a new socket with it (and closes the old one).
(function () {
  var httpUrl = new URL('/graphql', window.location.href).toString();
  var wsUrl = httpUrl.replace(/^http/, 'ws') + '/ws';

  function authorization(headers) {
    if (!headers) return undefined;
    for (var name in headers) {
      if (Object.prototype.hasOwnProperty.call(headers, name) &&
          name.toLowerCase() === 'authorization') {
        return String(headers[name]);
      }
    }
    return undefined;
  }

  var current = { auth: null, fetcher: null, client: null };
  function fetcherFor(auth) {
    var key = auth || '';
    if (current.fetcher && current.auth === key) return current.fetcher;
    if (current.client) current.client.dispose();
    var client = graphqlWs.createClient({
      url: wsUrl,
      lazy: true,
      connectionParams: auth ? { Authorization: auth } : {},
    });
    current = {
      auth: key,
      client: client,
      fetcher: GraphiQL.createFetcher({ url: httpUrl, wsClient: client }),
    };
    return current.fetcher;
  }

  function fetcher(params, opts) {
    return fetcherFor(authorization(opts && opts.headers))(params, opts);
  }
  // For tests and the browser console: which Authorization the websocket would send.
  window.agentplaneSocketAuthorization = function () { return current.auth; };

  var root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultEditorToolsVisibility: true,
      defaultQuery: '{\n  serverInfo {\n    version\n    backend\n    uptimeSeconds\n  }\n}\n',
    })
  );
})();
