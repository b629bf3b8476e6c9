// DefaultBounceClasses.swift: the built-in bounce classes, byte for byte the text of
// etc/bounce-classes.toml.
//
// BounceConfigTests checks that the two are identical. After editing etc/bounce-classes.toml, paste
// its text between the delimiters below (it is a raw string: backslashes are literal).

enum DefaultBounceClasses {
    static let text = #"""
# Tern's built-in bounce classes: the default rules that give each failure reply a class.
#
# A rule is a class and regular expressions over the reply as the log shows it, "code enhanced text"
# ("550 5.1.1 user unknown"), matched case-insensitively anywhere in it. Rules are tried in order and
# the first match wins; a reply no rule matches is Uncategorized. Tern's own failures, which have no
# reply code, read as the class of their enhanced code followed by "00" ("400 4.4.1 connect to
# mx.example.net[192.0.2.25]:25: connection refused").
#
# The class names are KumoMTA's (a KumoMTA user finds the same names in logs and suppression rules),
# plus MessageTooLarge; MessageExpired is given to a message too long in the queue and AdminBounce to
# one the postmaster returned, without a rule. Rules of your own go in tern.toml as [[bounce.rule]]
# tables of this shape: they are tried before these (so they can override them), and
# [bounce] builtin_rules = false leaves these out.
#
# The order matters: texts that name a cause come before the enhanced codes, because providers give
# 5.7.1 to blocklists, content, authentication and local policy alike, and some send no enhanced code.

# Authentication of the sender's domain (SPF, DKIM, DMARC): RFC 7372's x.7.23-x.7.27.
[[bounce.rule]]
class = "AuthenticationFailed"
reply = ['\b(DMARC|SPF|DKIM)\b', 'unauthenticated', 'not (properly )?authenticated',
         'does not meet the required authentication', '^[45]\d\d [45]\.7\.2[3-7] ']

[[bounce.rule]]
class = "VirusRelated"
reply = ['virus', 'malware', 'infected', 'unsafe content', 'security issue']

# Domain blocklists that list what is in the message (its links), not who sends it.
[[bounce.rule]]
class = "SpamContent"
reply = ['Spamhaus DBL', 'SURBL', 'URIBL']

# The sending IP or domain is blocked for its reputation, by a blocklist or by the provider.
[[bounce.rule]]
class = "SpamBlock"
reply = ['spamhaus', 'spamcop', 'barracuda', 'sorbs', '\b(RBL|DNSBL)\b', 'block ?list', 'black ?list',
         'blocked using', 'listed (at|on|in|by) ', 'reputation', 'banned sending IP',
         'unsolicited mail originating from', 'deferred due to user complaints', '\[(BL|TS|RL)\d+\]',
         '\(S3\d{3}\)', 'not allowed to send from', 'mail from \S+ not allowed']

[[bounce.rule]]
class = "SpamContent"
reply = ['spam', 'unsolicited', 'junk', 'content (filter|rejected|policy)', 'suspicious', 'phishing']

[[bounce.rule]]
class = "MessageTooLarge"
reply = ['too (large|big)', 'size limit', 'exceeds? (the )?(maximum|fixed|size)', 'message size',
         '^5\d\d 5\.3\.4 ', '^5\d\d 5\.2\.3 ']

[[bounce.rule]]
class = "QuotaIssues"
reply = ['quota', 'mailbox (is )?full', 'mailbox full', 'insufficient (system )?(storage|space)',
         'exceeded (its |the )?storage', '^[45]\d\d [45]\.2\.2 ']

# "Too many", "too quickly", "try again later": the destination wants less, or later.
[[bounce.rule]]
class = "TooManyRecipients"
reply = ['too many recipients', '^452 4\.5\.3 ']

[[bounce.rule]]
class = "TransientFailure"
reply = ['too many (connections|messages|sessions|concurrent)', 'too (fast|quickly)', '\brate\b', 'excessive volume', 'try again', 'greylist', 'graylist',
         'temporar', 'throttl', 'busy', 'resources? (temporarily )?unavailable']

[[bounce.rule]]
class = "InactiveMailbox"
reply = ['inactive', 'disabled', 'deactivated', 'discontinued', 'suspended',
         'no longer (active|available|in use|valid)', 'account (has been )?(closed|expired|locked)',
         '^5\d\d 5\.2\.1 ']

# The domain has no mail service: before InvalidRecipient, whose texts ("does not exist") are wider.
[[bounce.rule]]
class = "BadDomain"
reply = ['domain (name )?(not found|does not exist|doesn.t exist|unknown|is not valid)', 'nonexistent domain',
         'NonExistentDomain', 'host (or domain name )?not found', 'no (MX|mail exchanger|such domain)',
         'NXDOMAIN', 'null MX', '^5\d\d 5\.1\.2 ']

[[bounce.rule]]
class = "InvalidRecipient"
reply = ['user unknown', 'unknown user', 'no such (user|mailbox|recipient|address)', '(does not|doesn.t) exist',
         'doesn.t have a \S+ account', 'invalid (recipient|mailbox|address|user)',
         'recipient (address )?(rejected|unknown|not found|invalid)', 'mailbox (unavailable|not found|unknown)',
         'address rejected', 'RecipientNotFound', 'unrouteable address', '^5\d\d 5\.1\.[0-6] ']

[[bounce.rule]]
class = "RelayDenied"
reply = ['relay(ing)? (access )?(denied|not permitted|not allowed|prohibited)', 'not permitted to relay',
         'unable to relay', 'relay access']

# Tern's own failures to reach a host, and the DNS.
[[bounce.rule]]
class = "NoAnswerFromHost"
reply = ['connect to .*(refused|timed out|unreachable)', 'no answer', '^4\d\d 4\.4\.1 ']

[[bounce.rule]]
class = "BadConnection"
reply = ['lost connection', 'connection (reset|closed|dropped)', 'TLS handshake', 'timed out',
         '^4\d\d 4\.4\.2 ']

[[bounce.rule]]
class = "DNSFailure"
reply = ['\bDNS\b', 'name server', 'SERVFAIL', '^4\d\d 4\.4\.3 ']

[[bounce.rule]]
class = "RoutingErrors"
reply = ['mail loop', 'routing loop', 'too many hops', 'wrong .*region', '^[45]\d\d [45]\.4\.[0-6]\d* ']

[[bounce.rule]]
class = "MessageExpired"
reply = ['expired', 'too long in (the )?queue', '^[45]\d\d [45]\.4\.7 ']

[[bounce.rule]]
class = "PolicyRelated"
reply = ['policy', 'not allowed', 'prohibited', 'TLS (is )?required', 'REQUIRETLS', 'not accepted',
         '^[45]\d\d [45]\.7\.\d+ ']

[[bounce.rule]]
class = "ProtocolErrors"
reply = ['syntax', 'command (not recognized|unrecognized)', 'protocol', 'pipelin', '^5\d\d 5\.5\.\d+ ',
         '^[45]0[0-4] ']

"""#
}
