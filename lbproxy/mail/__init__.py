"""
IMAP and POP3 fronts: proxies that route each mail session by its user.

A mail session flows in four steps:

  1. B{Pre-login}: lbproxy answers the client itself (greeting,
     capabilities, STARTTLS/STLS, ID...) until the client sends its
     credentials. Limits, the login timeout, the TLS policy, the
     CVE-2011-0411 rule (nothing pipelined after STARTTLS) and
     backpressure on the replies apply here.
  2. B{Placement}: the user name, normalised
     (L{lbproxy.mail.config.normaliseUser}), picks the pool (the listener's
     C{user_pools}, else its pool) and is the selector's C{"user"} key
     (L{lbproxy.mail.context.MailFlowContext}), so every session of one
     user reaches the same server: the store holding its mailbox, or
     none when that store cannot take it (L{placement}; only a pool of
     replicas redispatches to the selector's next choice).
  3. B{Hand-off}: a backend dialog (L{lbproxy.mail.dialog.BackendDialog})
     reads the server's greeting, upgrades with STARTTLS/STLS when the pool
     asks for it, tells the server the client's address, replays the login
     and returns the server's answer, which the client gets as if the
     server had answered it. A refused login may be retried by the client;
     each attempt uses a new backend connection.
  4. B{Relay}: after a successful login, L{lbproxy.core.relay.Relay} moves bytes
     untouched both ways (IDLE, COMPRESS...), with backpressure and the
     listener's idle timeout.

Every session ends with one log line (user, client, server, TLS on each
leg, result, bytes, duration, how it ended). Passwords and literal contents
are never logged.

Modules: L{session} (what both fronts share), L{lines} (reading lines
and literals before the relay), L{backpressure} (no reading while the
client leaves its replies unread), L{arguments} (what may reach a store),
L{placement} (the user's store), L{throttle} (failed logins per client
address), L{logtext} (client text and TLS state in log lines), L{sasl}
(credentials, SASL PLAIN), L{context}, L{imap}, L{pop3}.
"""
