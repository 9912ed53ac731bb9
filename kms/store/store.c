/* SQLite metadata store. See store.h for the contract.
 *
 * One connection per struct store, guarded by one mutex: every public function takes
 * the lock for its whole duration, so prepared statements, sqlite3_errmsg() and
 * last_insert_rowid are never shared between calls. Writes that touch more than one
 * row run inside BEGIN IMMEDIATE, which also serialises writers in other processes
 * (kmsctl, a second kmsd) through SQLite's file lock and busy_timeout. */
#include "kms/store/store.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <openssl/evp.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kms/base/log.h"
#include "kms/base/secret.h"
#include "kms/store/authmac.h"
#include "kms/store/db.h"
#include <libpq-fe.h>
#include <poll.h>

#define XSTR(x) STR(x)
#define STR(x) #x

/* Long enough to ride out a checkpoint or another process's short write transaction,
 * short enough that a wedged peer turns into a 503 rather than a hung worker. */
#define BUSY_TIMEOUT_MS 5000
#define META_VALUE_MAX 4096
#define TYPE_MAX 31 /* struct store_key.type holds 32 bytes with the NUL */
/* PRAGMA application_id marks the file as ours ("kmsd" in ASCII), so that a store_path
 * pointing at some other application's SQLite file is refused instead of migrated. */
#define APPLICATION_ID 1802335076

/* Forward-only migrations: migrations[i] takes the schema from version i to i + 1, in
 * one transaction together with the schema_version update. Never edit a shipped step;
 * append a new one and bump STORE_SCHEMA_VERSION. */
static const char *const migrations[] = {
	/* 1: initial schema. Length checks use CAST(... AS BLOB) because length() of TEXT
	 * counts characters and the limits in store.h are bytes. */
	"PRAGMA application_id = " XSTR(APPLICATION_ID) ";"
	"CREATE TABLE schema_version ("
	"  id INTEGER PRIMARY KEY CHECK (id = 1),"
	"  version INTEGER NOT NULL"
	");"
	"CREATE TABLE meta ("
	"  k TEXT PRIMARY KEY NOT NULL CHECK (length(CAST(k AS BLOB)) BETWEEN 1 AND 128),"
	"  v TEXT NOT NULL CHECK (length(CAST(v AS BLOB)) <= 4096)"
	");"
	"CREATE TABLE tenants ("
	"  id INTEGER PRIMARY KEY,"
	"  name TEXT NOT NULL UNIQUE CHECK (length(CAST(name AS BLOB)) BETWEEN 1 AND 128),"
	"  retention TEXT NOT NULL CHECK (retention IN ('phi', 'non-phi')),"
	"  created INTEGER NOT NULL"
	");"
	"CREATE TABLE keys ("
	"  id INTEGER PRIMARY KEY,"
	"  tenant_id INTEGER NOT NULL REFERENCES tenants (id),"
	"  name TEXT NOT NULL CHECK (length(CAST(name AS BLOB)) BETWEEN 1 AND 128),"
	"  type TEXT NOT NULL CHECK (length(CAST(type AS BLOB)) BETWEEN 1 AND 31),"
	"  created INTEGER NOT NULL,"
	"  latest_version INTEGER NOT NULL CHECK (latest_version BETWEEN 1 AND 4294967295),"
	"  min_decryption_version INTEGER NOT NULL DEFAULT 1"
	"    CHECK (min_decryption_version BETWEEN 0 AND 4294967295),"
	"  min_encryption_version INTEGER NOT NULL DEFAULT 0"
	"    CHECK (min_encryption_version BETWEEN 0 AND 4294967295),"
	"  deletion_allowed INTEGER NOT NULL DEFAULT 0 CHECK (deletion_allowed IN (0, 1)),"
	"  auto_rotate_period INTEGER NOT NULL DEFAULT 0 CHECK (auto_rotate_period >= 0),"
	"  UNIQUE (tenant_id, name)"
	");"
	"CREATE TABLE key_versions ("
	"  key_id INTEGER NOT NULL REFERENCES keys (id),"
	"  version INTEGER NOT NULL CHECK (version BETWEEN 1 AND 4294967295),"
	"  blob BLOB NOT NULL CHECK (length(blob) BETWEEN 1 AND " XSTR(STORE_BLOB_MAX) "),"
	"  mac BLOB NOT NULL CHECK (length(mac) = " XSTR(STORE_MAC_LEN) "),"
	"  mk_version INTEGER NOT NULL CHECK (mk_version BETWEEN 0 AND 4294967295),"
	"  created INTEGER NOT NULL,"
	"  PRIMARY KEY (key_id, version)"
	") WITHOUT ROWID;"
	"CREATE TABLE principals ("
	"  id INTEGER PRIMARY KEY,"
	"  name TEXT NOT NULL UNIQUE CHECK (length(CAST(name AS BLOB)) BETWEEN 1 AND 128),"
	"  role TEXT NOT NULL CHECK (role IN ('admin', 'service')),"
	"  created INTEGER NOT NULL"
	");"
	"CREATE TABLE principal_tenants ("
	"  principal_id INTEGER NOT NULL REFERENCES principals (id),"
	"  tenant_id INTEGER NOT NULL REFERENCES tenants (id),"
	"  PRIMARY KEY (principal_id, tenant_id)"
	") WITHOUT ROWID;"
	/* Foreign keys need an index on the child column or every parent check scans. */
	"CREATE INDEX principal_tenants_tenant ON principal_tenants (tenant_id);"
	"CREATE TABLE api_tokens ("
	"  accessor TEXT PRIMARY KEY NOT NULL"
	"    CHECK (length(CAST(accessor AS BLOB)) BETWEEN 1 AND " XSTR(STORE_ACCESSOR_MAX) "),"
	"  principal_id INTEGER NOT NULL REFERENCES principals (id),"
	"  hash BLOB NOT NULL CHECK (length(hash) = " XSTR(STORE_HASH_LEN) "),"
	"  created INTEGER NOT NULL,"
	"  expires INTEGER NOT NULL DEFAULT 0 CHECK (expires >= 0),"
	"  revoked INTEGER NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1))"
	");"
	"CREATE INDEX api_tokens_principal ON api_tokens (principal_id);",
	/* 2: key lifecycle: version states, key revocation, and the history of both. */
	"ALTER TABLE keys ADD COLUMN revoked INTEGER NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1));"
	"ALTER TABLE key_versions ADD COLUMN state TEXT NOT NULL DEFAULT 'enabled'"
	"  CHECK (state IN ('enabled', 'disabled', 'pending_destruction', 'destroyed'));"
	"ALTER TABLE key_versions ADD COLUMN destroy_after INTEGER NOT NULL DEFAULT 0;"
	"CREATE TABLE key_events ("
	"  id INTEGER PRIMARY KEY,"
	"  key_id INTEGER NOT NULL REFERENCES keys (id),"
	"  version INTEGER NOT NULL CHECK (version BETWEEN 0 AND 4294967295),"
	"  event TEXT NOT NULL CHECK (length(CAST(event AS BLOB)) BETWEEN 1 AND 31),"
	"  principal TEXT NOT NULL CHECK (length(CAST(principal AS BLOB)) <= 128),"
	"  reason TEXT NOT NULL CHECK (length(CAST(reason AS BLOB)) <= 512),"
	"  time INTEGER NOT NULL"
	");"
	"CREATE INDEX key_events_key ON key_events (key_id, id);",
	/* 3: retention and destruction. 189216000 s = 6 x 365 days (HIPAA documentation
	 * retention); 604800 s = 7 days. */
	"ALTER TABLE tenants ADD COLUMN retention_period INTEGER NOT NULL DEFAULT 189216000"
	"  CHECK (retention_period >= 0);"
	"ALTER TABLE tenants ADD COLUMN min_destroy_wait INTEGER NOT NULL DEFAULT 604800"
	"  CHECK (min_destroy_wait >= 604800);"
	"ALTER TABLE tenants ADD COLUMN legal_hold INTEGER NOT NULL DEFAULT 0 CHECK (legal_hold IN (0, 1));"
	"ALTER TABLE keys ADD COLUMN legal_hold INTEGER NOT NULL DEFAULT 0 CHECK (legal_hold IN (0, 1));"
	"CREATE INDEX key_versions_due ON key_versions (state, destroy_after);",
	/* 4: policy documents, every version kept. */
	"CREATE TABLE policies ("
	"  version INTEGER PRIMARY KEY CHECK (version >= 1),"
	"  text TEXT NOT NULL CHECK (length(CAST(text AS BLOB)) BETWEEN 2 AND 1048576),"
	"  principal TEXT NOT NULL CHECK (length(CAST(principal AS BLOB)) <= 128),"
	"  created INTEGER NOT NULL"
	");",
	/* 5: encryptions reserved per key version, in blocks, before they are used. */
	"ALTER TABLE key_versions ADD COLUMN enc_reserved INTEGER NOT NULL DEFAULT 0 CHECK (enc_reserved >= 0);",
	/* 6: signed erasure receipts for destroyed key versions. */
	"CREATE TABLE erasure_receipts ("
	"  key_id INTEGER NOT NULL REFERENCES keys (id),"
	"  version INTEGER NOT NULL,"
	"  receipt TEXT NOT NULL CHECK (length(CAST(receipt AS BLOB)) BETWEEN 2 AND 8192),"
	"  signature BLOB NOT NULL CHECK (length(signature) BETWEEN 8 AND 256),"
	"  created INTEGER NOT NULL,"
	"  PRIMARY KEY (key_id, version)"
	") WITHOUT ROWID;",
	/* 7: master-key versions and the steps of their rotation. No row means a store
	 * from before rotation existed: version 1 (made by kmsd init) is active. The partial
	 * unique index allows one active and one retiring version at a time. */
	"CREATE TABLE master_keys ("
	"  version INTEGER PRIMARY KEY CHECK (version BETWEEN 1 AND 4294967295),"
	"  state TEXT NOT NULL CHECK (state IN ('active', 'retiring', 'destroyed')),"
	"  since INTEGER NOT NULL"
	");"
	"CREATE UNIQUE INDEX master_keys_live ON master_keys (state)"
	"  WHERE state IN ('active', 'retiring');"
	"CREATE TABLE master_key_events ("
	"  id INTEGER PRIMARY KEY,"
	"  time INTEGER NOT NULL,"
	"  mk_version INTEGER NOT NULL CHECK (mk_version BETWEEN 0 AND 4294967295),"
	"  event TEXT NOT NULL CHECK (length(CAST(event AS BLOB)) BETWEEN 1 AND 31),"
	"  principal TEXT NOT NULL CHECK (length(CAST(principal AS BLOB)) <= 128),"
	"  detail TEXT NOT NULL CHECK (length(CAST(detail AS BLOB)) <= 512)"
	");"
	"CREATE INDEX key_versions_mk ON key_versions (mk_version, state);",
	/* 8: when each API token was last used (0 = never), kept to the minute. */
	"ALTER TABLE api_tokens ADD COLUMN last_used INTEGER NOT NULL DEFAULT 0;",
	/* 9: quorum approval requests and their votes; break-glass grants and their
	 * after-the-fact reviews (docs/API.md "Approvals", "Break-glass"). A request holds
	 * only admin operations: never a plaintext, a DEK or a token. */
	"CREATE TABLE approval_requests ("
	"  id TEXT PRIMARY KEY CHECK (length(id) = 32),"
	"  requester_id INTEGER NOT NULL REFERENCES principals (id),"
	"  requester TEXT NOT NULL CHECK (length(CAST(requester AS BLOB)) BETWEEN 1 AND 128),"
	"  operation TEXT NOT NULL CHECK (length(CAST(operation AS BLOB)) BETWEEN 1 AND 63),"
	"  tenant TEXT NOT NULL CHECK (length(CAST(tenant AS BLOB)) <= 128),"
	"  key TEXT NOT NULL CHECK (length(CAST(key AS BLOB)) <= 128),"
	"  version TEXT NOT NULL CHECK (length(CAST(version AS BLOB)) <= 15),"
	"  request TEXT NOT NULL CHECK (length(CAST(request AS BLOB)) BETWEEN 2 AND 20000000),"
	"  required INTEGER NOT NULL CHECK (required BETWEEN 1 AND 16),"
	"  state TEXT NOT NULL CHECK (state IN ('pending', 'executing', 'approved-executed', 'denied',"
	"    'expired', 'failed')),"
	"  created INTEGER NOT NULL,"
	"  expires INTEGER NOT NULL,"
	"  finished INTEGER NOT NULL DEFAULT 0,"
	"  result TEXT CHECK (result IS NULL OR length(CAST(result AS BLOB)) <= 20000000)"
	");"
	"CREATE INDEX approval_requests_state ON approval_requests (state, expires);"
	"CREATE TABLE approval_votes ("
	"  request_id TEXT NOT NULL REFERENCES approval_requests (id),"
	"  principal_id INTEGER NOT NULL REFERENCES principals (id),"
	"  principal TEXT NOT NULL CHECK (length(CAST(principal AS BLOB)) BETWEEN 1 AND 128),"
	"  verdict TEXT NOT NULL CHECK (verdict IN ('approve', 'deny')),"
	"  time INTEGER NOT NULL,"
	"  PRIMARY KEY (request_id, principal_id)"
	") WITHOUT ROWID;"
	"CREATE TABLE break_glass_grants ("
	"  id TEXT PRIMARY KEY CHECK (length(id) = 32),"
	"  principal_id INTEGER NOT NULL REFERENCES principals (id),"
	"  principal TEXT NOT NULL CHECK (length(CAST(principal AS BLOB)) BETWEEN 1 AND 128),"
	"  reason TEXT NOT NULL CHECK (length(CAST(reason AS BLOB)) BETWEEN 1 AND 1024),"
	"  tenant TEXT NOT NULL CHECK (length(CAST(tenant AS BLOB)) BETWEEN 1 AND 128),"
	"  key TEXT NOT NULL CHECK (length(CAST(key AS BLOB)) BETWEEN 1 AND 128),"
	"  granted INTEGER NOT NULL,"
	"  expires INTEGER NOT NULL CHECK (expires > granted)"
	");"
	"CREATE INDEX break_glass_grants_principal ON break_glass_grants (principal_id, expires);"
	"CREATE TABLE break_glass_reviews ("
	"  grant_id TEXT NOT NULL REFERENCES break_glass_grants (id),"
	"  principal_id INTEGER NOT NULL REFERENCES principals (id),"
	"  principal TEXT NOT NULL CHECK (length(CAST(principal AS BLOB)) BETWEEN 1 AND 128),"
	"  verdict TEXT NOT NULL CHECK (verdict IN ('justified', 'unjustified')),"
	"  note TEXT NOT NULL CHECK (length(CAST(note AS BLOB)) BETWEEN 1 AND 1024),"
	"  time INTEGER NOT NULL,"
	"  PRIMARY KEY (grant_id, principal_id)"
	") WITHOUT ROWID;",
	/* 10: the auditor role, and client certificates mapped to principals. SQLite cannot
	 * change a CHECK in place, so principals is rebuilt (the procedure of SQLite's
	 * "Making Other Kinds Of Table Schema Changes", inside this step's transaction).
	 * foreign_keys is on and cannot be switched off inside a transaction, so the
	 * foreign-key checks are deferred to COMMIT instead: dropping principals counts
	 * every api_tokens and principal_tenants row (and any other child) as a pending
	 * violation, and putting each row back, same id, under the same table name, takes
	 * its count off again. A row lost on the way leaves the count above zero and the
	 * COMMIT, the whole step with it, fails. The columns are listed: a step that adds
	 * a column to principals must be added here too, and until it is, the guard makes
	 * this step fail rather than drop that column's data. */
	"CREATE TEMP TABLE auditor_migration_guard ("
	"  principals_has_4_columns INTEGER CHECK (principals_has_4_columns = 4));"
	"INSERT INTO auditor_migration_guard SELECT count(*) FROM pragma_table_info('principals');"
	"DROP TABLE auditor_migration_guard;"
	"PRAGMA defer_foreign_keys = ON;"
	"CREATE TABLE principals_copy AS SELECT id, name, role, created FROM principals;"
	"DROP TABLE principals;"
	"CREATE TABLE principals ("
	"  id INTEGER PRIMARY KEY,"
	"  name TEXT NOT NULL UNIQUE CHECK (length(CAST(name AS BLOB)) BETWEEN 1 AND 128),"
	"  role TEXT NOT NULL CHECK (role IN ('admin', 'service', 'auditor')),"
	"  created INTEGER NOT NULL"
	");"
	"INSERT INTO principals (id, name, role, created) SELECT id, name, role, created FROM principals_copy;"
	"DROP TABLE principals_copy;"
	/* kind 'spki': value = lower-case hex SHA-256 of the certificate's
	 * SubjectPublicKeyInfo (64 chars); kind 'subject': value = the subject DN as
	 * RFC 4514 text, compared exactly. A value maps to one principal at most. */
	"CREATE TABLE principal_certs ("
	"  id INTEGER PRIMARY KEY,"
	"  principal_id INTEGER NOT NULL REFERENCES principals (id),"
	"  kind TEXT NOT NULL CHECK (kind IN ('spki', 'subject')),"
	"  value TEXT NOT NULL CHECK (length(CAST(value AS BLOB)) BETWEEN 1 AND 1024),"
	"  created INTEGER NOT NULL,"
	"  UNIQUE (kind, value)"
	");"
	"CREATE INDEX principal_certs_principal ON principal_certs (principal_id);",
	/* 11: TOTP step-up state per principal. The seed is sealed (AES-256-GCM) by the
	 * token's kmsd-mfa-seal key, bound to the principal; recovery codes are PBKDF2
	 * hashes; last_step only grows (replay protection across restarts). */
	"CREATE TABLE principal_mfa ("
	"  principal_id INTEGER PRIMARY KEY REFERENCES principals (id),"
	"  state TEXT NOT NULL CHECK (state IN ('pending', 'active')),"
	"  sealed_seed BLOB NOT NULL CHECK (length(sealed_seed) BETWEEN 29 AND 128),"
	"  last_step INTEGER NOT NULL DEFAULT 0 CHECK (last_step >= 0),"
	"  failures INTEGER NOT NULL DEFAULT 0 CHECK (failures BETWEEN 0 AND 1000000),"
	"  locked INTEGER NOT NULL DEFAULT 0 CHECK (locked IN (0, 1)),"
	"  recovery TEXT NOT NULL CHECK (length(CAST(recovery AS BLOB)) <= 1024),"
	"  mfa_at INTEGER NOT NULL DEFAULT 0,"
	"  created INTEGER NOT NULL,"
	"  updated INTEGER NOT NULL,"
	"  pending_seed BLOB CHECK (pending_seed IS NULL OR length(pending_seed) BETWEEN 29 AND 128),"
	"  pending_recovery TEXT CHECK (pending_recovery IS NULL OR length(CAST(pending_recovery AS BLOB)) <= 1024)"
	");",
	/* 12: a MAC by the token's store MAC key on every row that grants authority
	 * (kms/store/authmac.h). NULL in rows written before this step, until kmsd MACs them
	 * once at its next start (meta "authority_macs"); after that a NULL is refused. */
	"ALTER TABLE principals ADD COLUMN mac BLOB CHECK (mac IS NULL OR length(mac) = " XSTR(STORE_MAC_LEN) ");"
	"ALTER TABLE api_tokens ADD COLUMN mac BLOB CHECK (mac IS NULL OR length(mac) = " XSTR(STORE_MAC_LEN) ");"
	"ALTER TABLE principal_tenants ADD COLUMN mac BLOB CHECK (mac IS NULL OR length(mac) = " XSTR(STORE_MAC_LEN) ");"
	"ALTER TABLE policies ADD COLUMN mac BLOB CHECK (mac IS NULL OR length(mac) = " XSTR(STORE_MAC_LEN) ");"
	"ALTER TABLE principal_certs ADD COLUMN mac BLOB CHECK (mac IS NULL OR length(mac) = " XSTR(STORE_MAC_LEN) ");"
	"ALTER TABLE principal_mfa ADD COLUMN mac BLOB CHECK (mac IS NULL OR length(mac) = " XSTR(STORE_MAC_LEN) ");",
	/* 13: an approved request left "executing" by a crash is marked interrupted at start
	 * (never run again); shown as state "interrupted" (APPROVAL_COLS) */
	"ALTER TABLE approval_requests ADD COLUMN interrupted INTEGER NOT NULL DEFAULT 0 CHECK (interrupted IN (0, 1));",
};

_Static_assert(sizeof(migrations) / sizeof(migrations[0]) == STORE_SCHEMA_VERSION,
	       "one migration step per schema version");
_Static_assert(STORE_NAME_MAX == 128, "schema CHECKs hard-code STORE_NAME_MAX");
_Static_assert(META_VALUE_MAX == 4096, "schema CHECK hard-codes META_VALUE_MAX");

/* Connection setup, each checked by reading it back: a PRAGMA that SQLite does not
 * understand, or cannot apply (journal_mode on some file systems, foreign_keys inside
 * a transaction), fails silently otherwise. */
static const struct {
	const char *set;
	const char *get;
	const char *want;
} pragmas[] = {
	{"PRAGMA journal_mode = WAL", "PRAGMA journal_mode", "wal"},
	{"PRAGMA synchronous = FULL", "PRAGMA synchronous", "2"},
	{"PRAGMA foreign_keys = ON", "PRAGMA foreign_keys", "1"},
	/* Freed cells and pages are zeroed, so a destroyed KEK blob does not linger in the
	 * database file. The WAL still holds older page images until they are overwritten:
	 * whoever adds key destruction must follow the delete with
	 * PRAGMA wal_checkpoint(TRUNCATE) to empty it. */
	{"PRAGMA secure_delete = ON", "PRAGMA secure_delete", "1"},
	{"PRAGMA trusted_schema = OFF", "PRAGMA trusted_schema", "0"},
};

enum stmt_id {
	ST_BEGIN,
	ST_TX_LOCK,
	ST_COMMIT,
	ST_ROLLBACK,
	ST_META_GET,
	ST_META_SET,
	ST_TENANT_INSERT,
	ST_TENANT_GET,
	ST_TENANT_LIST,
	ST_KEY_INSERT,
	ST_KEY_GET,
	ST_KEY_LIST,
	ST_KEY_LATEST,
	ST_KEY_SET_LATEST,
	ST_VERSION_INSERT,
	ST_VERSION_GET,
	ST_VERSION_LIST,
	ST_PRINCIPAL_INSERT,
	ST_PRINCIPAL_TENANT_INSERT,
	ST_PRINCIPAL_GET,
	ST_PRINCIPAL_GET_ID,
	ST_PRINCIPAL_LIST,
	ST_PRINCIPAL_TENANTS,
	ST_TOKEN_INSERT,
	ST_TOKEN_GET,
	ST_TOKEN_REVOKE,
	ST_TOKEN_TOUCH,
	ST_KEY_CONFIG,
	ST_KEY_REVOKED,
	ST_VERSION_STATE_GET,
	ST_VERSION_STATE_SET,
	ST_EVENT_INSERT,
	ST_EVENT_LIST,
	ST_KEY_HOLD,
	ST_TENANT_CONFIG,
	ST_VERSION_DESTROY,
	ST_DUE_LIST,
	ST_POLICY_MAX,
	ST_POLICY_INSERT,
	ST_POLICY_LATEST,
	ST_VERSION_RESERVE,
	ST_VERSION_RESERVED,
	ST_ROTATIONS_DUE,
	ST_RECEIPT_PUT,
	ST_RECEIPT_GET,
	ST_MK_LIVE,
	ST_MK_MAX,
	ST_MK_SET,
	ST_MK_FINISH,
	ST_MK_ROWS,
	ST_MK_PENDING_COUNT,
	ST_MK_COUNTS,
	ST_MK_PENDING,
	ST_MK_REWRAP,
	ST_MK_EVENT_INSERT,
	ST_MK_EVENT_LIST,
	ST_CERT_INSERT,
	ST_CERT_LIST,
	ST_CERT_DELETE,
	ST_CERT_LOOKUP,
	ST__COUNT
};

#define TENANT_COLS "id, name, retention, created, retention_period, min_destroy_wait, legal_hold"
#define KEY_COLS                                                                     \
	"id, tenant_id, name, type, created, latest_version, min_decryption_version, " \
	"min_encryption_version, deletion_allowed, auto_rotate_period, revoked, legal_hold"
#define VERSION_COLS "version, mk_version, blob, mac, created, state, destroy_after, enc_reserved"
#define VERSION_COLS_V                                                                     \
	"v.version, v.mk_version, v.blob, v.mac, v.created, v.state, v.destroy_after, " \
	"v.enc_reserved"
#define PRINCIPAL_COLS "id, name, role, created, mac"

static const char *const stmt_sql[ST__COUNT] = {
	[ST_BEGIN] = "BEGIN IMMEDIATE",
	[ST_TX_LOCK] = "SELECT 1", /* PostgreSQL only: see stmt_sql_pg */
	[ST_COMMIT] = "COMMIT",
	[ST_ROLLBACK] = "ROLLBACK",
	[ST_META_GET] = "SELECT v FROM meta WHERE k = ?1",
	[ST_META_SET] = "INSERT INTO meta (k, v) VALUES (?1, ?2) "
			"ON CONFLICT (k) DO UPDATE SET v = excluded.v",
	[ST_TENANT_INSERT] = "INSERT INTO tenants (name, retention, created) VALUES (?1, ?2, ?3) RETURNING id",
	[ST_TENANT_GET] = "SELECT " TENANT_COLS " FROM tenants WHERE name = ?1",
	[ST_TENANT_LIST] = "SELECT " TENANT_COLS " FROM tenants ORDER BY name",
	[ST_KEY_INSERT] = "INSERT INTO keys (tenant_id, name, type, created, latest_version) "
			  "VALUES (?1, ?2, ?3, ?4, 1) RETURNING id",
	[ST_KEY_GET] = "SELECT " KEY_COLS " FROM keys WHERE tenant_id = ?1 AND name = ?2",
	/* The LEFT JOIN tells "no such tenant" (no row) from "tenant without keys" (one row,
	 * NULL name) in one statement, so the answer cannot straddle a concurrent write. */
	[ST_KEY_LIST] = "SELECT k.name FROM tenants t LEFT JOIN keys k ON k.tenant_id = t.id "
			"WHERE t.id = ?1 ORDER BY k.name",
	[ST_KEY_LATEST] = "SELECT latest_version FROM keys WHERE id = ?1",
	[ST_KEY_SET_LATEST] = "UPDATE keys SET latest_version = ?2 "
			      "WHERE id = ?1 AND latest_version = ?3",
	[ST_VERSION_INSERT] = "INSERT INTO key_versions "
			      "(key_id, version, blob, mac, mk_version, created) "
			      "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
	[ST_VERSION_GET] = "SELECT " VERSION_COLS " FROM key_versions "
			   "WHERE key_id = ?1 AND version = ?2",
	[ST_VERSION_LIST] = "SELECT " VERSION_COLS " FROM key_versions "
			    "WHERE key_id = ?1 ORDER BY version",
	[ST_PRINCIPAL_INSERT] = "INSERT INTO principals (name, role, created) VALUES (?1, ?2, ?3) RETURNING id",
	[ST_PRINCIPAL_TENANT_INSERT] = "INSERT INTO principal_tenants (principal_id, tenant_id, mac) "
				       "VALUES (?1, ?2, ?3)",
	[ST_PRINCIPAL_GET] = "SELECT " PRINCIPAL_COLS " FROM principals WHERE name = ?1",
	[ST_PRINCIPAL_GET_ID] = "SELECT " PRINCIPAL_COLS " FROM principals WHERE id = ?1",
	[ST_PRINCIPAL_LIST] = "SELECT " PRINCIPAL_COLS " FROM principals ORDER BY name",
	/* Same LEFT JOIN trick as ST_KEY_LIST. */
	[ST_PRINCIPAL_TENANTS] = "SELECT pt.tenant_id, pt.mac FROM principals p "
				 "LEFT JOIN principal_tenants pt ON pt.principal_id = p.id "
				 "WHERE p.id = ?1 ORDER BY pt.tenant_id",
	[ST_TOKEN_INSERT] = "INSERT INTO api_tokens "
			    "(accessor, principal_id, hash, created, expires, revoked, mac) "
			    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
	[ST_TOKEN_GET] = "SELECT accessor, principal_id, hash, created, expires, revoked, last_used, mac "
			 "FROM api_tokens WHERE accessor = ?1",
	[ST_TOKEN_TOUCH] = "UPDATE api_tokens SET last_used = ?2 WHERE accessor = ?1 AND last_used < ?2",
	[ST_TOKEN_REVOKE] = "UPDATE api_tokens SET revoked = 1, mac = ?2 WHERE accessor = ?1",
	[ST_KEY_CONFIG] = "UPDATE keys SET min_decryption_version = ?2, min_encryption_version = ?3, "
			  "deletion_allowed = ?4, auto_rotate_period = ?5 WHERE id = ?1",
	[ST_KEY_REVOKED] = "UPDATE keys SET revoked = ?2 WHERE id = ?1 AND revoked = ?3",
	[ST_VERSION_STATE_GET] = "SELECT state FROM key_versions WHERE key_id = ?1 AND version = ?2",
	[ST_VERSION_STATE_SET] = "UPDATE key_versions SET state = ?3, destroy_after = ?4 "
				 "WHERE key_id = ?1 AND version = ?2 AND state = ?5",
	[ST_EVENT_INSERT] = "INSERT INTO key_events (key_id, version, event, principal, reason, time) "
			    "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
	[ST_KEY_HOLD] = "UPDATE keys SET legal_hold = ?2 WHERE id = ?1 AND legal_hold = ?3",
	[ST_TENANT_CONFIG] = "UPDATE tenants SET retention_period = ?2, min_destroy_wait = ?3, "
			     "legal_hold = ?4 WHERE id = ?1",
	/* The blob and MAC are overwritten in place with fixed filler of the same CHECKed
	 * shape; secure_delete zeroes the freed space of the old cell. */
	[ST_VERSION_DESTROY] = "UPDATE key_versions SET state = 'destroyed', blob = x'00', "
			       "mac = zeroblob(32), destroy_after = 0 "
			       "WHERE key_id = ?1 AND version = ?2 AND state = 'pending_destruction'",
	[ST_DUE_LIST] = "SELECT v.key_id, v.version, v.destroy_after, t.name, k.name "
			"FROM key_versions v JOIN keys k ON k.id = v.key_id JOIN tenants t ON t.id = k.tenant_id "
			"WHERE v.state = 'pending_destruction' AND v.destroy_after <= ?1 "
			"ORDER BY v.destroy_after, v.key_id, v.version",
	[ST_POLICY_MAX] = "SELECT coalesce(max(version), 0) FROM policies",
	[ST_POLICY_INSERT] = "INSERT INTO policies (version, text, principal, created, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
	[ST_POLICY_LATEST] = "SELECT version, text, mac FROM policies ORDER BY version DESC LIMIT 1",
	[ST_VERSION_RESERVE] = "UPDATE key_versions SET enc_reserved = enc_reserved + ?3 "
			       "WHERE key_id = ?1 AND version = ?2 AND enc_reserved + ?3 <= ?4 RETURNING enc_reserved",
	[ST_VERSION_RESERVED] = "SELECT enc_reserved FROM key_versions WHERE key_id = ?1 AND version = ?2",
	[ST_ROTATIONS_DUE] = "SELECT t.name, k.name, k.latest_version FROM keys k "
			     "JOIN tenants t ON t.id = k.tenant_id "
			     "JOIN key_versions v ON v.key_id = k.id AND v.version = k.latest_version "
			     "WHERE k.auto_rotate_period > 0 AND k.revoked = 0 AND v.created + k.auto_rotate_period <= ?1 "
			     "ORDER BY k.id",
	[ST_RECEIPT_PUT] = "INSERT INTO erasure_receipts (key_id, version, receipt, signature, created) "
			   "VALUES (?1, ?2, ?3, ?4, ?5)",
	[ST_RECEIPT_GET] = "SELECT receipt, signature FROM erasure_receipts WHERE key_id = ?1 AND version = ?2",
	[ST_EVENT_LIST] = "SELECT version, event, principal, reason, time FROM key_events "
			  "WHERE key_id = ?1 ORDER BY id",
	[ST_MK_LIVE] = "SELECT version, state FROM master_keys WHERE state IN ('active', 'retiring')",
	[ST_MK_MAX] = "SELECT coalesce(max(version), 0), count(*) FROM master_keys",
	[ST_MK_SET] = "INSERT INTO master_keys (version, state, since) VALUES (?1, ?2, ?3) "
		      "ON CONFLICT (version) DO UPDATE SET state = excluded.state, since = excluded.since",
	[ST_MK_FINISH] = "UPDATE master_keys SET state = 'destroyed', since = ?2 "
			 "WHERE version = ?1 AND state = 'retiring'",
	[ST_MK_ROWS] = "SELECT count(*) FROM key_versions WHERE mk_version = ?1 AND state != 'destroyed'",
	[ST_MK_PENDING_COUNT] = "SELECT count(*) FROM key_versions WHERE mk_version != ?1 AND state != 'destroyed'",
	[ST_MK_COUNTS] = "SELECT mk_version, state = 'destroyed', count(*) FROM key_versions "
			 "GROUP BY 1, 2 ORDER BY 1, 2",
	[ST_MK_PENDING] = "SELECT v.key_id, t.name, k.name, " VERSION_COLS_V " FROM key_versions v "
			  "JOIN keys k ON k.id = v.key_id JOIN tenants t ON t.id = k.tenant_id "
			  "WHERE v.mk_version != ?1 AND v.state != 'destroyed' "
			  "AND (v.key_id > ?2 OR (v.key_id = ?2 AND v.version > ?3)) "
			  "ORDER BY v.key_id, v.version LIMIT ?4",
	/* Compare-and-set on (mk_version, blob): a row changed since it was read (destroyed,
	 * or moved by another run) is left alone. */
	[ST_MK_REWRAP] = "UPDATE key_versions SET blob = ?3, mac = ?4, mk_version = ?5 "
			 "WHERE key_id = ?1 AND version = ?2 AND mk_version = ?6 AND blob = ?7 "
			 "AND state != 'destroyed'",
	[ST_MK_EVENT_INSERT] = "INSERT INTO master_key_events (time, mk_version, event, principal, detail) "
			       "VALUES (?1, ?2, ?3, ?4, ?5)",
	[ST_MK_EVENT_LIST] = "SELECT id, time, mk_version, event, principal, detail FROM master_key_events "
			     "WHERE id > ?1 ORDER BY id LIMIT ?2",
	[ST_CERT_INSERT] = "INSERT INTO principal_certs (principal_id, kind, value, created) VALUES (?1, ?2, ?3, ?4) "
			    "RETURNING id",
	[ST_CERT_LIST] = "SELECT id, kind, value, created FROM principal_certs WHERE principal_id = ?1 ORDER BY id",
	[ST_CERT_DELETE] = "DELETE FROM principal_certs WHERE principal_id = ?1 AND kind = ?2 AND value = ?3",
	[ST_CERT_LOOKUP] = "SELECT principal_id, id, mac FROM principal_certs WHERE kind = ?1 AND value = ?2",
};

/* PostgreSQL's spelling where SQLite's does not run there (NULL: the same SQL). A writer
 * transaction takes one cluster-wide advisory lock after BEGIN, as BEGIN IMMEDIATE takes
 * SQLite's write lock: read-then-write transactions of all nodes are serialised, so
 * READ COMMITTED sees the last committed state and nothing can slip in between. */
#define PG_TX_LOCK_KEY "7011486240561237329" /* "kmsd-tx" */
static const char *const stmt_sql_pg[ST__COUNT] = {
	[ST_BEGIN] = "BEGIN",
	[ST_TX_LOCK] = "SELECT pg_advisory_xact_lock(" PG_TX_LOCK_KEY ")",
	[ST_VERSION_DESTROY] = "UPDATE key_versions SET state = 'destroyed', blob = '\\x00'::bytea, "
			       "mac = decode(repeat('00', 32), 'hex'), destroy_after = 0 "
			       "WHERE key_id = ?1 AND version = ?2 AND state = 'pending_destruction'",
};

struct store {
	pthread_mutex_t mu;
	struct db *db;
	db_stmt *st[ST__COUNT];
	/* The descriptor store_open checked the file with, kept open until the connection
	 * is closed: closing any descriptor of a file drops every POSIX lock the process
	 * holds on it, SQLite's included (the shared lock that tells other processes a
	 * connection is still using the WAL). Another process closing the store would then
	 * think itself the last, checkpoint and delete the WAL under us, and we would go on
	 * reading a stale snapshot. */
	int fd;
	/* store_change_stamp: rows changed by bookkeeping writes that no cache depends on
	 * (a token's last-used time, meta rows), and PRAGMA data_version, prepared on first use */
	int64_t quiet_changes;
	db_stmt *data_version;
	/* SQLite: the wal-index header in the connection's own mapping of the -shm file
	 * (NULL until mapped; wal_hdr_off: not mappable, PRAGMA every time), the copy of it
	 * read just before the last PRAGMA data_version (all zero: none, which no valid
	 * header equals), and that PRAGMA's answer */
	const volatile unsigned char *wal_hdr;
	bool wal_hdr_off;
	unsigned char wal_seen[96];
	int64_t wal_external;
	uint64_t stamp_queries;
	/* PostgreSQL: the newest change-log seq store_changes_since has returned (the
	 * cluster thread reads the log every cluster_sync_ms); store_change_stamp's
	 * external part, so that a request costs no round trip for it */
	int64_t changes_seen;
	/* authority-row MACs (store_set_authmac); NULL: not computed, not checked */
	store_mac_fn am_mac;
	store_integrity_fn am_bad;
	void *am_ctx, *am_bad_ctx;
	/* rows verified under (am_seen_fn, am_seen_ctx): see store.h; under mu */
	store_mac_fn am_seen_fn;
	void *am_seen_ctx;
	struct am_seen *am_seen;
	/* PostgreSQL: this run of kmsd, "<node_id>/<run>" (store_set_executor), written into
	 * the approved requests it runs; "" until set. Under mu. */
	char executor[STORE_EXECUTOR_MAX + 1];
};

/* SQL that must be spelled differently on PostgreSQL (scalar max/min, blob literals):
 * the SQLite text first, PostgreSQL's second. */
#define PICK(s, lite, pg) (db_backend((s)->db) == DB_PG ? (pg) : (lite))

/* ---- helpers; every one of them expects the caller to hold s->mu ---- */

/* Logs SQLite's own words (they may name tables and columns, which is fine in the
 * operator log) and gives the caller a detail that says nothing about the schema. */
static kms_err db_fail(struct store *s, const char *what)
{
	if (db_backend(s->db) == DB_PG)
		kms_error("store: %s: %s (postgresql, code %d)", what, db_errmsg(s->db), db_errcode(s->db));
	else
		kms_error("store: %s: %s (sqlite %d)", what, db_errmsg(s->db), db_errcode(s->db));
	return kms_errf(KMS_ERR_STORE, "metadata store error");
}

/* A row that violates what the schema promises: edited by hand or a bug. Refused
 * rather than copied into fixed-size output fields. */
static kms_err db_corrupt(const char *what)
{
	kms_error("store: corrupt row in %s", what);
	return kms_errf(KMS_ERR_STORE, "metadata store error");
}

static bool is_unique_violation(int src)
{
	return src == DB_CONSTRAINT_UNIQUE || src == DB_CONSTRAINT_PRIMARYKEY;
}

/* Returns the statement to a clean state for the next caller. db_reset() repeats
 * the code of the last db_step(), which the caller has already acted on, so it is
 * not checked again here. */
static void stmt_release(db_stmt *st)
{
	if (st == NULL)
		return;
	(void)db_reset(st);
	(void)db_clear_bindings(st); /* always DB_OK */
}

/* Steps a statement that returns no rows, then releases it. Returns SQLite's code
 * (DB_DONE on success); sqlite3_errmsg() still describes a failure afterwards,
 * because db_reset() leaves the connection's error as the step left it. */
static int stmt_exec(db_stmt *st)
{
	int src = db_step(st);

	stmt_release(st);
	return src;
}

/* Steps an INSERT ... RETURNING id to its end (SQLite counts the change only then) and
 * releases it; DB_DONE with *id set, or the failing code. */
static int stmt_insert_id(db_stmt *st, int64_t *id)
{
	int src = db_step(st);

	if (src == DB_ROW) {
		*id = db_column_int64(st, 0);
		src = db_step(st);
	} else if (src == DB_DONE) {
		src = DB_ERROR; /* no row: cannot happen for a successful INSERT */
	}
	stmt_release(st);
	return src;
}

static kms_err tx_begin(struct store *s)
{
	int src;
	kms_err rc;

	if (stmt_exec(s->st[ST_BEGIN]) != DB_DONE)
		return db_fail(s, "begin");
	if (db_backend(s->db) != DB_PG)
		return KMS_OK;
	/* PostgreSQL: the cluster-wide writer lock, held until COMMIT or ROLLBACK */
	src = db_step(s->st[ST_TX_LOCK]);
	stmt_release(s->st[ST_TX_LOCK]);
	if (src != DB_ROW) {
		rc = db_fail(s, "begin lock");
		if (db_in_tx(s->db) && stmt_exec(s->st[ST_ROLLBACK]) != DB_DONE)
			kms_error("store: rollback: %s", db_errmsg(s->db));
		return rc;
	}
	return KMS_OK;
}

static kms_err tx_commit(struct store *s)
{
	if (stmt_exec(s->st[ST_COMMIT]) != DB_DONE)
		return db_fail(s, "commit");
	return KMS_OK;
}

/* Error path only; the caller is already returning an error, so a failed rollback is
 * logged rather than returned. Some errors (DB_FULL, IOERR, BUSY, NOMEM) make
 * SQLite roll back on its own, and a second ROLLBACK would then fail: skip it. */
static void tx_rollback(struct store *s)
{
	if (!db_in_tx(s->db))
		return;
	if (stmt_exec(s->st[ST_ROLLBACK]) != DB_DONE)
		kms_error("store: rollback: %s", db_errmsg(s->db));
}

static kms_err store_lock(struct store *s)
{
	if (s == NULL)
		return kms_errf(KMS_ERR_INTERNAL, "store not open");
	if (pthread_mutex_lock(&s->mu) != 0)
		return kms_errf(KMS_ERR_INTERNAL, "store lock failed");
	return KMS_OK;
}

static void store_unlock(struct store *s)
{
	/* Fails only for a mutex this thread does not hold, which store_lock rules out. */
	(void)pthread_mutex_unlock(&s->mu);
}

static kms_err check_name(const char *what, const char *name)
{
	if (name == NULL || name[0] == '\0')
		return kms_errf(KMS_ERR_INVALID, "%s name must not be empty", what);
	if (strnlen(name, STORE_NAME_MAX + 1) > STORE_NAME_MAX)
		return kms_errf(KMS_ERR_INVALID, "%s name is longer than %d bytes", what,
				STORE_NAME_MAX);
	return KMS_OK;
}

static kms_err check_version_row(const struct store_version *v)
{
	if (v == NULL)
		return kms_errf(KMS_ERR_INVALID, "key version missing");
	if (v->version == 0)
		return kms_errf(KMS_ERR_INVALID, "key version must be at least 1");
	if (v->blob_len == 0 || v->blob_len > STORE_BLOB_MAX)
		return kms_errf(KMS_ERR_INVALID, "wrapped key must be 1 to %d bytes",
				STORE_BLOB_MAX);
	return KMS_OK;
}

static kms_err col_text(db_stmt *st, int col, char *dst, size_t cap, const char *what)
{
	const unsigned char *t = db_column_text(st, col);
	int len = db_column_bytes(st, col);

	if (t == NULL || len < 0 || (size_t)len >= cap)
		return db_corrupt(what);
	memcpy(dst, t, (size_t)len);
	dst[len] = '\0';
	return KMS_OK;
}

static kms_err col_blob(db_stmt *st, int col, uint8_t *dst, size_t min, size_t max,
			size_t *len_out, const char *what)
{
	const void *b = db_column_blob(st, col);
	int len = db_column_bytes(st, col);

	if (b == NULL || len < 0 || (size_t)len < min || (size_t)len > max)
		return db_corrupt(what);
	memcpy(dst, b, (size_t)len);
	if (len_out != NULL)
		*len_out = (size_t)len;
	return KMS_OK;
}

static kms_err col_u32(db_stmt *st, int col, uint32_t *out, const char *what)
{
	int64_t v = db_column_int64(st, col);

	if (v < 0 || v > UINT32_MAX)
		return db_corrupt(what);
	*out = (uint32_t)v;
	return KMS_OK;
}

static kms_err row_tenant(db_stmt *st, struct store_tenant *t)
{
	kms_err rc;

	memset(t, 0, sizeof(*t));
	t->id = db_column_int64(st, 0);
	if ((rc = col_text(st, 1, t->name, sizeof(t->name), "tenants")) != KMS_OK ||
	    (rc = col_text(st, 2, t->retention, sizeof(t->retention), "tenants")) != KMS_OK)
		return rc;
	t->created = db_column_int64(st, 3);
	t->retention_period = db_column_int64(st, 4);
	t->min_destroy_wait = db_column_int64(st, 5);
	t->legal_hold = db_column_int64(st, 6) != 0;
	return KMS_OK;
}

static kms_err row_key(db_stmt *st, struct store_key *k)
{
	kms_err rc;

	memset(k, 0, sizeof(*k));
	k->id = db_column_int64(st, 0);
	k->tenant_id = db_column_int64(st, 1);
	if ((rc = col_text(st, 2, k->name, sizeof(k->name), "keys")) != KMS_OK ||
	    (rc = col_text(st, 3, k->type, sizeof(k->type), "keys")) != KMS_OK)
		return rc;
	k->created = db_column_int64(st, 4);
	if ((rc = col_u32(st, 5, &k->latest_version, "keys")) != KMS_OK ||
	    (rc = col_u32(st, 6, &k->min_decryption_version, "keys")) != KMS_OK ||
	    (rc = col_u32(st, 7, &k->min_encryption_version, "keys")) != KMS_OK)
		return rc;
	k->deletion_allowed = db_column_int64(st, 8) != 0;
	k->auto_rotate_period = db_column_int64(st, 9);
	k->revoked = db_column_int64(st, 10) != 0;
	k->legal_hold = db_column_int64(st, 11) != 0;
	return KMS_OK;
}

static kms_err row_version(db_stmt *st, struct store_version *v)
{
	kms_err rc;

	memset(v, 0, sizeof(*v));
	if ((rc = col_u32(st, 0, &v->version, "key_versions")) != KMS_OK ||
	    (rc = col_u32(st, 1, &v->mk_version, "key_versions")) != KMS_OK ||
	    (rc = col_blob(st, 2, v->blob, 1, STORE_BLOB_MAX, &v->blob_len, "key_versions")) !=
		    KMS_OK ||
	    (rc = col_blob(st, 3, v->mac, STORE_MAC_LEN, STORE_MAC_LEN, NULL, "key_versions")) !=
		    KMS_OK)
		return rc;
	v->created = db_column_int64(st, 4);
	if ((rc = col_text(st, 5, v->state, sizeof(v->state), "key_versions")) != KMS_OK)
		return rc;
	v->destroy_after = db_column_int64(st, 6);
	v->enc_reserved = (uint64_t)db_column_int64(st, 7);
	return KMS_OK;
}

/* ---- authority-row MACs (store.h, authmac.h); the caller holds s->mu ---- */

/* Rows known good: direct-mapped by the SHA-256 of the encoding; an entry holds the
 * digest and the MAC the row carried when it verified. */
#define AM_SEEN_SLOTS 4096
struct am_seen {
	uint8_t digest[32];
	uint8_t mac[STORE_MAC_LEN];
	bool used;
};

static bool am_equal(const uint8_t *a, const uint8_t *b, size_t n)
{
	volatile uint8_t d = 0;

	for (size_t i = 0; i < n; i++)
		d |= (uint8_t)(a[i] ^ b[i]);
	return d == 0;
}

static bool am_digest(const uint8_t *enc, size_t len, uint8_t digest[32])
{
	unsigned int dl = 0;

	return EVP_Digest(enc, len, digest, &dl, EVP_sha256(), NULL) == 1 && dl == 32;
}

static struct am_seen *am_slot(struct store *s, const uint8_t digest[32])
{
	uint32_t i = ((uint32_t)digest[0] << 24 | (uint32_t)digest[1] << 16 | (uint32_t)digest[2] << 8 | digest[3]) %
		     AM_SEEN_SLOTS;

	if (s->am_seen == NULL && (s->am_seen = calloc(AM_SEEN_SLOTS, sizeof(*s->am_seen))) == NULL)
		return NULL; /* no memory: every read goes to the token */
	return &s->am_seen[i];
}

/* The MAC of a row of table t with fields f[0..n). */
static kms_err am_compute_locked(struct store *s, enum store_am_table t, const struct store_am_field *f, size_t n,
				 uint8_t mac[STORE_MAC_LEN])
{
	uint8_t *enc = NULL, digest[32];
	size_t len = 0;
	kms_err rc = store_am_encode(t, f, n, &enc, &len);
	struct am_seen *e;

	if (rc == KMS_OK)
		rc = s->am_mac(s->am_ctx, enc, len, mac);
	if (rc == KMS_OK && am_digest(enc, len, digest) && (e = am_slot(s, digest)) != NULL) {
		memcpy(e->digest, digest, sizeof(digest));
		memcpy(e->mac, mac, STORE_MAC_LEN);
		e->used = true;
	}
	free(enc);
	return rc;
}

/* Whether this exact row, with this MAC, verified before. */
static bool am_seen_before(struct store *s, enum store_am_table t, const struct store_am_field *f, size_t n,
			   const uint8_t *mac)
{
	uint8_t *enc = NULL, digest[32];
	size_t len = 0;
	struct am_seen *e;
	bool hit = false;

	if (store_am_encode(t, f, n, &enc, &len) != KMS_OK)
		return false;
	if (am_digest(enc, len, digest) && (e = am_slot(s, digest)) != NULL && e->used)
		/* both compared whole, whatever the first says (no && short cut) */
		hit = ((int)am_equal(e->digest, digest, sizeof(digest)) & (int)am_equal(e->mac, mac, STORE_MAC_LEN)) != 0;
	free(enc);
	return hit;
}

/* Binds the row's MAC (or NULL without a MAC function) to parameter idx of st. */
static kms_err am_bind_locked(struct store *s, db_stmt *st, int idx, enum store_am_table t,
			      const struct store_am_field *f, size_t n)
{
	uint8_t mac[STORE_MAC_LEN];
	kms_err rc;

	if (s->am_mac == NULL)
		return db_bind_null(st, idx) == DB_OK ? KMS_OK : db_fail(s, "mac bind");
	if ((rc = am_compute_locked(s, t, f, n, mac)) != KMS_OK)
		return rc;
	return db_bind_blob(st, idx, mac, STORE_MAC_LEN, DB_TRANSIENT) == DB_OK ? KMS_OK
											     : db_fail(s, "mac bind");
}

/* Checks the MAC in column col of the current row of st against fields f. row names
 * the row for the log (an id or an accessor; never a token). A missing or wrong MAC
 * is logged, reported to the integrity callback and refused (DENIED, the same answer
 * as an unknown credential). Without a MAC function, KMS_OK. */
static kms_err am_check_locked(struct store *s, db_stmt *st, int col, enum store_am_table t,
			       const struct store_am_field *f, size_t n, const char *row)
{
	uint8_t want[STORE_MAC_LEN];
	const void *have;
	kms_err rc;

	if (s->am_mac == NULL)
		return KMS_OK;
	have = db_column_blob(st, col);
	if (have == NULL || db_column_bytes(st, col) != STORE_MAC_LEN) {
		kms_error("store: %s row %s has no integrity MAC: refused (written outside kmsd?)",
			  store_am_table_name(t), row);
	} else {
		if (am_seen_before(s, t, f, n, have))
			return KMS_OK;
		if ((rc = am_compute_locked(s, t, f, n, want)) != KMS_OK)
			return rc;
		if (am_equal(want, have, STORE_MAC_LEN))
			return KMS_OK;
		kms_error("store: %s row %s fails its integrity MAC: refused (edited outside kmsd?)",
			  store_am_table_name(t), row);
	}
	if (s->am_bad != NULL)
		s->am_bad(s->am_bad_ctx, store_am_table_name(t), row);
	return kms_errf(KMS_ERR_DENIED, "permission denied");
}

#define AM_INT(v) {.kind = STORE_AM_INT, .i = (int64_t)(v)}
#define AM_STR(v) {.kind = STORE_AM_BYTES, .b = (v), .n = strlen(v)}
#define AM_BYTES(v, len) {.kind = STORE_AM_BYTES, .b = (v), .n = (len)}

static kms_err am_check_principal_locked(struct store *s, db_stmt *st, const struct store_principal *p)
{
	struct store_am_field f[] = {AM_INT(p->id), AM_STR(p->name), AM_STR(p->role)};
	char row[32];

	snprintf(row, sizeof(row), "id=%" PRId64, p->id);
	return am_check_locked(s, st, 4, STORE_AM_PRINCIPAL, f, 3, row);
}

static kms_err am_check_token_locked(struct store *s, db_stmt *st, const struct store_token *t)
{
	struct store_am_field f[] = {AM_STR(t->accessor), AM_INT(t->principal_id), AM_BYTES(t->hash, STORE_HASH_LEN),
				     AM_INT(t->expires), AM_INT(t->revoked != 0)};
	char row[STORE_ACCESSOR_MAX + 16];

	snprintf(row, sizeof(row), "accessor=%s", t->accessor);
	return am_check_locked(s, st, 7, STORE_AM_TOKEN, f, 5, row);
}

static kms_err row_principal(db_stmt *st, struct store_principal *p)
{
	kms_err rc;

	memset(p, 0, sizeof(*p));
	p->id = db_column_int64(st, 0);
	if ((rc = col_text(st, 1, p->name, sizeof(p->name), "principals")) != KMS_OK ||
	    (rc = col_text(st, 2, p->role, sizeof(p->role), "principals")) != KMS_OK)
		return rc;
	p->created = db_column_int64(st, 3);
	return KMS_OK;
}

/* Returns arr with room for at least n + 1 elements (possibly moved), or NULL with
 * arr untouched and still owned by the caller. Non-secret data, so realloc is fine. */
static void *grow(void *arr, size_t *cap, size_t n, size_t elem)
{
	size_t ncap;
	void *p;

	if (n < *cap)
		return arr;
	ncap = *cap ? *cap * 2 : 8;
	if (ncap < *cap || ncap > SIZE_MAX / elem)
		return NULL;
	p = realloc(arr, ncap * elem);
	if (p == NULL)
		return NULL;
	*cap = ncap;
	return p;
}

/* ---- open, migrate, close ---- */

/* Runs a one-off statement (open time only) and copies column 0 of its first row as
 * text; *src receives SQLite's code so that the caller can tell "not a database". */
static kms_err query_text(struct store *s, const char *sql, char *out, size_t cap, int *src)
{
	db_stmt *st = NULL;
	const unsigned char *t;
	int len;
	kms_err rc;

	*src = db_prepare(s->db, sql, false, &st);
	if (*src != DB_OK) {
		rc = db_fail(s, sql);
		goto out;
	}
	*src = db_step(st);
	if (*src == DB_DONE) {
		kms_error("store: %s returned no row", sql);
		rc = kms_errf(KMS_ERR_STORE, "metadata store error");
		goto out;
	}
	if (*src != DB_ROW) {
		rc = db_fail(s, sql);
		goto out;
	}
	t = db_column_text(st, 0);
	len = db_column_bytes(st, 0);
	if (t == NULL || len < 0 || (size_t)len >= cap) {
		rc = db_corrupt(sql);
		goto out;
	}
	memcpy(out, t, (size_t)len);
	out[len] = '\0';
	rc = KMS_OK;
out:
	/* finalize repeats the step's code, already handled above */
	(void)db_finalize(st);
	return rc;
}

static kms_err query_int(struct store *s, const char *sql, int64_t *out, int *src)
{
	char buf[32];
	char *end;
	kms_err rc;

	if ((rc = query_text(s, sql, buf, sizeof(buf), src)) != KMS_OK)
		return rc;
	errno = 0;
	*out = strtoll(buf, &end, 10);
	if (errno != 0 || end == buf || *end != '\0')
		return db_corrupt(sql);
	return KMS_OK;
}

static kms_err exec_sql(struct store *s, const char *sql, const char *what, int *src)
{
	char *msg = NULL;

	*src = db_exec(s->db, sql, &msg);
	if (*src != DB_OK) {
		kms_error("store: %s: %s (sqlite %d)", what, msg ? msg : db_errstr(*src),
			  *src);
		db_free(msg);
		return kms_errf(KMS_ERR_STORE, "metadata store error");
	}
	return KMS_OK;
}

/* The schema version of an open transaction's snapshot: 0 for a fresh, empty file;
 * KMS_ERR_CONFIG for a SQLite file that is not a kmsd store or is newer than this
 * code. Reads only, so a file that is refused is left exactly as it was. *src is
 * SQLite's code for the caller to recognise "not a database". */
static kms_err schema_version_locked(struct store *s, const char *path, int64_t *ver, int *src)
{
	int64_t app_id, n_objects, has_table;
	kms_err rc;

	*src = DB_OK;
	if ((rc = query_int(s, "PRAGMA application_id", &app_id, src)) != KMS_OK ||
	    (rc = query_int(s, "SELECT count(*) FROM sqlite_schema", &n_objects, src)) !=
		    KMS_OK ||
	    (rc = query_int(s,
			    "SELECT count(*) FROM sqlite_schema "
			    "WHERE type = 'table' AND name = 'schema_version'",
			    &has_table, src)) != KMS_OK)
		return rc;
	if (app_id == 0 && n_objects == 0) {
		*ver = 0;
		return KMS_OK;
	}
	if (app_id != APPLICATION_ID || !has_table)
		return kms_errf(KMS_ERR_CONFIG, "%s is a SQLite database but not a kmsd store",
				path);
	if ((rc = query_int(s, "SELECT version FROM schema_version WHERE id = 1", ver, src)) !=
	    KMS_OK)
		return rc;
	if (*ver > STORE_SCHEMA_VERSION || *ver < 1)
		return kms_errf(KMS_ERR_CONFIG,
				"%s has schema version %" PRId64
				", this kmsd supports up to %d: run a newer kmsd",
				path, *ver, STORE_SCHEMA_VERSION);
	return KMS_OK;
}

/* Before anything is written (journal mode, file mode, migrations), make sure the file
 * is a kmsd store this code understands, or empty: pointing store_path at the wrong
 * file, or starting an older kmsd on a newer store, must not alter that file. */
static kms_err store_identify(struct store *s, const char *path)
{
	int64_t ver;
	int src, src_end;
	kms_err rc, end;

	if ((rc = exec_sql(s, "BEGIN", "identify begin", &src)) != KMS_OK)
		return rc;
	rc = schema_version_locked(s, path, &ver, &src);
	if (rc != KMS_OK && src == DB_NOTADB)
		rc = kms_errf(KMS_ERR_CONFIG, "%s is not a SQLite database", path);
	if (!!db_in_tx(s->db)) {
		/* a read-only transaction: ending it cannot lose anything */
		end = exec_sql(s, "ROLLBACK", "identify end", &src_end);
		if (rc == KMS_OK)
			rc = end;
	}
	return rc;
}

/* One transaction per step: a crash between steps leaves a store at a consistent
 * intermediate version that the next start continues from. BEGIN IMMEDIATE makes a
 * second process that opens the same file at the same time wait and then see the
 * migrated version instead of applying the step twice. */
static kms_err store_migrate(struct store *s, const char *path)
{
	char sql[96];
	int64_t ver;
	int src;
	kms_err rc;

	for (;;) {
		if ((rc = exec_sql(s, "BEGIN IMMEDIATE", "migrate begin", &src)) != KMS_OK)
			return rc;
		if ((rc = schema_version_locked(s, path, &ver, &src)) != KMS_OK)
			goto fail;
		if (ver == STORE_SCHEMA_VERSION)
			break;
		if ((rc = exec_sql(s, migrations[ver], "migration", &src)) != KMS_OK)
			goto fail;
		snprintf(sql, sizeof(sql),
			 "INSERT OR REPLACE INTO schema_version (id, version) VALUES (1, %" PRId64
			 ")",
			 ver + 1);
		if ((rc = exec_sql(s, sql, "schema version update", &src)) != KMS_OK)
			goto fail;
		if ((rc = exec_sql(s, "COMMIT", "migrate commit", &src)) != KMS_OK)
			goto fail;
		kms_info("store: %s migrated to schema version %" PRId64, path, ver + 1);
	}
	/* Nothing was written in this last transaction; COMMIT just releases the lock. */
	if ((rc = exec_sql(s, "COMMIT", "migrate commit", &src)) != KMS_OK)
		goto fail;
	return KMS_OK;
fail:
	if (!!db_in_tx(s->db) &&
	    exec_sql(s, "ROLLBACK", "migrate rollback", &src) != KMS_OK)
		kms_error("store: %s: rollback after failed migration failed", path);
	return rc;
}

/* SQLite creates a new database with 0644 & ~umask, and its -wal and -shm files copy
 * the main file's mode. Creating the file ourselves first fixes the mode of all three.
 * The descriptor stays open until the file is known to be ours (store_tighten). */
static kms_err store_prepare_file(const char *path, int *fd_out, mode_t *mode_out)
{
	struct stat sb;
	kms_err rc;
	int fd;

	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY, 0600);
	if (fd < 0)
		return kms_errf(KMS_ERR_CONFIG, "cannot open store %s: %s", path, strerror(errno));
	rc = KMS_ERR_CONFIG;
	if (fstat(fd, &sb) != 0) {
		rc = kms_errf(KMS_ERR_CONFIG, "cannot stat store %s: %s", path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(sb.st_mode)) {
		rc = kms_errf(KMS_ERR_CONFIG, "store %s is not a regular file", path);
		goto out;
	}
	*fd_out = fd;
	*mode_out = sb.st_mode;
	fd = -1;
	rc = KMS_OK;
out:
	if (fd >= 0)
		(void)close(fd); /* nothing was written through fd */
	return rc;
}

/* A store made by hand or restored from a backup may be group- or world-readable; the
 * wrapped blobs and token hashes in it are not secrets on their own, but nobody else
 * has a reason to read them. */
static kms_err store_tighten(int fd, mode_t mode, const char *path)
{
	if ((mode & 077) == 0)
		return KMS_OK;
	kms_warn("store: %s had mode %04o, tightening to 0600", path, (unsigned)(mode & 07777));
	if (fchmod(fd, 0600) != 0)
		return kms_errf(KMS_ERR_CONFIG, "cannot chmod store %s: %s", path, strerror(errno));
	return KMS_OK;
}

static kms_err store_connection_setup(struct store *s)
{
	sqlite3 *lite = db_sqlite_handle(s->db);

	if (sqlite3_extended_result_codes(lite, 1) != DB_OK ||
	    sqlite3_busy_timeout(lite, BUSY_TIMEOUT_MS) != DB_OK ||
	    /* Defensive mode stops writable_schema and similar ways for a crafted
	     * database file or SQL to corrupt the file. */
	    sqlite3_db_config(lite, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL) != DB_OK ||
	    sqlite3_db_config(lite, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0, NULL) !=
		    DB_OK)
		return db_fail(s, "connection setup");
	return KMS_OK;
}

static kms_err store_pragmas(struct store *s, const char *path)
{
	char got[16];
	size_t i;
	int src;
	kms_err rc;

	for (i = 0; i < sizeof(pragmas) / sizeof(pragmas[0]); i++) {
		if ((rc = exec_sql(s, pragmas[i].set, pragmas[i].set, &src)) != KMS_OK ||
		    (rc = query_text(s, pragmas[i].get, got, sizeof(got), &src)) != KMS_OK)
			return rc;
		if (strcmp(got, pragmas[i].want) != 0) {
			kms_error("store: %s: %s is %s, wanted %s", path, pragmas[i].get, got,
				  pragmas[i].want);
			return kms_errf(KMS_ERR_STORE, "metadata store error");
		}
	}
	return KMS_OK;
}

/* ---- PostgreSQL: identify, migrate, open ---- */

#include "kms/store/schema_pg.h"

/* Migrations of all nodes take turns under this lock (one transaction per step). */
#define PG_MIGRATE_LOCK_KEY "7011486240561237325" /* "kmsd-mig" */

static bool is_pg_uri(const char *p)
{
	return strncmp(p, "postgresql://", 13) == 0 || strncmp(p, "postgres://", 11) == 0;
}

/* The URI as the log may show it: without a password (user:password@) or any query
 * parameter (?password=...). */
static void uri_display(const char *uri, char *out, size_t cap)
{
	const char *scheme_end = strstr(uri, "://");
	const char *host, *at, *colon, *q;
	size_t len;

	snprintf(out, cap, "%s", uri);
	if (scheme_end == NULL)
		return;
	host = scheme_end + 3;
	at = strchr(host, '@');
	q = strchr(host, '?');
	len = q != NULL ? (size_t)(q - uri) : strlen(uri);
	if (at != NULL && (q == NULL || at < q)) {
		colon = memchr(host, ':', (size_t)(at - host));
		if (colon != NULL) {
			snprintf(out, cap, "%.*s%.*s", (int)(colon - uri), uri, (int)(len - (size_t)(at - uri)), at);
			return;
		}
	}
	snprintf(out, cap, "%.*s", (int)len, uri);
}

/* As schema_version_locked, for PostgreSQL: the current schema holds nothing (fresh),
 * or kmsd's tables with schema_version's application mark; anything else is refused. */
static kms_err pg_schema_version_locked(struct store *s, const char *name, int64_t *ver)
{
	int64_t n_objects, has_mark;
	int src;
	kms_err rc;

	if ((rc = query_int(s,
			    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
			    "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
			    &n_objects, &src)) != KMS_OK ||
	    (rc = query_int(s,
			    "SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema() "
			    "AND table_name = 'schema_version' AND column_name = 'application'",
			    &has_mark, &src)) != KMS_OK)
		return rc;
	if (n_objects == 0) {
		*ver = 0;
		return KMS_OK;
	}
	if (!has_mark)
		return kms_errf(KMS_ERR_CONFIG, "%s: the database's schema holds tables but is not a kmsd store", name);
	if ((rc = query_int(s, "SELECT version FROM schema_version WHERE id = 1 AND application = 'kmsd'", ver,
			    &src)) != KMS_OK)
		return rc;
	if (*ver > PG_SCHEMA_VERSION || *ver < 1)
		return kms_errf(KMS_ERR_CONFIG,
				"%s has schema version %" PRId64 ", this kmsd supports up to %d: run a newer kmsd",
				name, *ver, PG_SCHEMA_VERSION);
	return KMS_OK;
}

static kms_err pg_migrate(struct store *s, const char *name)
{
	char sql[160];
	int64_t ver;
	int src;
	kms_err rc;

	for (;;) {
		if ((rc = exec_sql(s, "BEGIN", "migrate begin", &src)) != KMS_OK ||
		    (rc = exec_sql(s, "SELECT pg_advisory_xact_lock(" PG_MIGRATE_LOCK_KEY ")", "migrate lock",
				   &src)) != KMS_OK)
			goto fail;
		if ((rc = pg_schema_version_locked(s, name, &ver)) != KMS_OK)
			goto fail;
		if (ver == PG_SCHEMA_VERSION)
			break;
		if ((rc = exec_sql(s, pg_migrations[ver], "migration", &src)) != KMS_OK)
			goto fail;
		snprintf(sql, sizeof(sql),
			 "INSERT INTO schema_version (id, version) VALUES (1, %" PRId64
			 ") ON CONFLICT (id) DO UPDATE SET version = excluded.version",
			 ver + 1);
		if ((rc = exec_sql(s, sql, "schema version update", &src)) != KMS_OK ||
		    (rc = exec_sql(s, "COMMIT", "migrate commit", &src)) != KMS_OK)
			goto fail;
		kms_info("store: %s migrated to schema version %" PRId64, name, ver + 1);
	}
	if ((rc = exec_sql(s, "COMMIT", "migrate commit", &src)) != KMS_OK)
		goto fail;
	return KMS_OK;
fail:
	if (db_in_tx(s->db) && exec_sql(s, "ROLLBACK", "migrate rollback", &src) != KMS_OK)
		kms_error("store: %s: rollback after failed migration failed", name);
	return rc;
}

/* Session settings, run again after every reconnect: commits wait for the WAL flush
 * (synchronous_commit=on, PostgreSQL's default, set so that a server default of off
 * cannot weaken it); a lock (the writer lock of another node's transaction) is waited
 * for as long as SQLite's busy_timeout, then the call fails (503); and this node's id
 * for the change log (store_set_node). */
static kms_err pg_session(struct store *s, const char *node)
{
	char sql[160];

	snprintf(sql, sizeof(sql),
		 "SET synchronous_commit = on; SET lock_timeout = '%ds'; SET kmsd.node = '%s'",
		 BUSY_TIMEOUT_MS / 1000, node);
	if (db_set_session(s->db, sql) != DB_OK)
		return db_fail(s, "session setup");
	return KMS_OK;
}

static kms_err store_open_pg(const char *uri, struct store **out)
{
	char name[256];
	struct store *s;
	size_t i;
	kms_err rc;

	uri_display(uri, name, sizeof(name));
	s = calloc(1, sizeof(*s));
	if (s == NULL)
		return kms_errf(KMS_ERR_NOMEM, "out of memory");
	s->fd = -1;
	if (pthread_mutex_init(&s->mu, NULL) != 0) {
		free(s);
		return kms_errf(KMS_ERR_INTERNAL, "store lock init failed");
	}
	if (db_open_pg(uri, &s->db) != DB_OK) {
		kms_error("store: connect %s: %s", name, s->db != NULL ? db_errmsg(s->db) : "out of memory");
		rc = kms_errf(KMS_ERR_STORE, "metadata store error: cannot connect to %s", name);
		goto out;
	}
	if ((rc = pg_session(s, "")) != KMS_OK || (rc = pg_migrate(s, name)) != KMS_OK)
		goto out;
	for (i = 0; i < ST__COUNT; i++) {
		const char *sql = stmt_sql_pg[i] != NULL ? stmt_sql_pg[i] : stmt_sql[i];

		if (db_prepare(s->db, sql, true, &s->st[i]) != DB_OK) {
			rc = db_fail(s, sql);
			goto out;
		}
	}
	*out = s;
	return KMS_OK;
out:
	for (i = 0; i < ST__COUNT; i++)
		(void)db_finalize(s->st[i]);
	(void)db_close(s->db);
	(void)pthread_mutex_destroy(&s->mu);
	free(s);
	return rc;
}

void store_display_name(const char *path_or_uri, char *out, size_t cap)
{
	if (cap == 0)
		return;
	if (path_or_uri == NULL)
		out[0] = '\0';
	else if (is_pg_uri(path_or_uri))
		uri_display(path_or_uri, out, cap);
	else
		snprintf(out, cap, "%s", path_or_uri);
}

enum store_backend store_backend(const struct store *s)
{
	return db_backend(s->db) == DB_PG ? STORE_BACKEND_PG : STORE_BACKEND_SQLITE;
}

kms_err store_open(const char *path, struct store **out)
{
	struct store *s = NULL;
	bool mu_init = false;
	mode_t mode = 0;
	int fd = -1;
	size_t i;
	int src;
	kms_err rc;

	if (out == NULL || path == NULL || path[0] == '\0')
		return kms_errf(KMS_ERR_INVALID, "store path missing");
	*out = NULL;
	if (is_pg_uri(path))
		return store_open_pg(path, out);
	if ((rc = store_prepare_file(path, &fd, &mode)) != KMS_OK)
		return rc;
	rc = KMS_ERR_NOMEM;
	s = calloc(1, sizeof(*s));
	if (s == NULL) {
		rc = kms_errf(KMS_ERR_NOMEM, "out of memory");
		goto out;
	}
	s->fd = -1;
	if (pthread_mutex_init(&s->mu, NULL) != 0) {
		rc = kms_errf(KMS_ERR_INTERNAL, "store lock init failed");
		goto out;
	}
	mu_init = true;
	/* NOMUTEX: s->mu already serialises every use of the connection, so SQLite's own
	 * per-connection mutex would be a second lock taken for nothing. */
	src = db_open_sqlite(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, &s->db);
	if (src != DB_OK) {
		kms_error("store: open %s: %s", path,
			  s->db && db_sqlite_handle(s->db) ? db_errmsg(s->db) : db_errstr(src));
		rc = kms_errf(KMS_ERR_STORE, "metadata store error");
		goto out;
	}
	if ((rc = store_connection_setup(s)) != KMS_OK || (rc = store_identify(s, path)) != KMS_OK ||
	    (rc = store_tighten(fd, mode, path)) != KMS_OK || (rc = store_pragmas(s, path)) != KMS_OK ||
	    (rc = store_migrate(s, path)) != KMS_OK)
		goto out;
	/* Prepared once, after migration, because they name the migrated tables. */
	for (i = 0; i < ST__COUNT; i++) {
		if (db_prepare(s->db, stmt_sql[i], true, &s->st[i]) != DB_OK) {
			rc = db_fail(s, stmt_sql[i]);
			goto out;
		}
	}
	s->fd = fd; /* only fchmod'ed, never written; closed after the connection */
	fd = -1;
	*out = s;
	s = NULL;
	rc = KMS_OK;
out:
	if (s != NULL) {
		for (i = 0; i < ST__COUNT; i++)
			(void)db_finalize(s->st[i]); /* NULL-safe; no step pending */
		if (s->db != NULL && db_close(s->db) != DB_OK)
			kms_error("store: close %s: %s", path, db_errmsg(s->db));
		if (mu_init)
			(void)pthread_mutex_destroy(&s->mu);
		free(s);
	}
	if (fd >= 0)
		(void)close(fd); /* after the connection: see struct store */
	return rc;
}

void store_close(struct store *s)
{
	size_t i;

	if (s == NULL)
		return;
	for (i = 0; i < ST__COUNT; i++)
		(void)db_finalize(s->st[i]); /* every statement was reset after use */
	(void)db_finalize(s->data_version);
	/* The last connection to close checkpoints the WAL into the database and deletes
	 * it. A failure here leaves the WAL on disk, which the next open replays. */
	if (db_close(s->db) != DB_OK)
		kms_error("store: close: %s", db_errmsg(s->db));
	if (s->fd >= 0)
		(void)close(s->fd);
	(void)pthread_mutex_destroy(&s->mu);
	free(s->am_seen);
	free(s);
}

/* ---- meta ---- */

kms_err store_meta_get(struct store *s, const char *k, char *out, size_t cap)
{
	db_stmt *st = NULL;
	const unsigned char *t;
	int src, len;
	kms_err rc;

	if ((rc = check_name("meta", k)) != KMS_OK)
		return rc;
	if (out == NULL || cap == 0)
		return kms_errf(KMS_ERR_INVALID, "no room for meta value");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_META_GET];
	if (db_bind_text(st, 1, k, -1, DB_STATIC) != DB_OK) {
		rc = db_fail(s, "meta get bind");
		goto out;
	}
	src = db_step(st);
	if (src == DB_DONE) {
		rc = kms_errf(KMS_ERR_NOT_FOUND, "meta \"%s\" not set", k);
		goto out;
	}
	if (src != DB_ROW) {
		rc = db_fail(s, "meta get");
		goto out;
	}
	t = db_column_text(st, 0);
	len = db_column_bytes(st, 0);
	if (t == NULL || len < 0) {
		rc = db_corrupt("meta");
		goto out;
	}
	if ((size_t)len >= cap) {
		rc = kms_errf(KMS_ERR_INVALID, "meta \"%s\" does not fit in %zu bytes", k, cap);
		goto out;
	}
	memcpy(out, t, (size_t)len);
	out[len] = '\0';
	rc = KMS_OK;
out:
	stmt_release(st);
	store_unlock(s);
	return rc;
}

kms_err store_meta_set(struct store *s, const char *k, const char *v)
{
	db_stmt *st;
	kms_err rc;

	if ((rc = check_name("meta", k)) != KMS_OK)
		return rc;
	if (v == NULL || strnlen(v, META_VALUE_MAX + 1) > META_VALUE_MAX)
		return kms_errf(KMS_ERR_INVALID, "meta value must be at most %d bytes",
				META_VALUE_MAX);
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_META_SET];
	if (db_bind_text(st, 1, k, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 2, v, -1, DB_STATIC) != DB_OK) {
		rc = db_fail(s, "meta set bind");
		stmt_release(st);
		goto out;
	}
	if (stmt_exec(st) != DB_DONE) {
		rc = db_fail(s, "meta set");
		goto out;
	}
	/* meta holds bookkeeping (health's clock check writes it every second while a
	 * load balancer polls); no cache of rows depends on it: see store_change_stamp */
	s->quiet_changes += db_changes(s->db);
	rc = KMS_OK;
out:
	store_unlock(s);
	return rc;
}

/* ---- tenants ---- */

kms_err store_tenant_create(struct store *s, const char *name, const char *retention,
			    int64_t now, int64_t *id_out)
{
	db_stmt *st;
	int64_t id = 0;
	int src;
	kms_err rc;

	if ((rc = check_name("tenant", name)) != KMS_OK)
		return rc;
	if (retention == NULL || (strcmp(retention, "phi") != 0 && strcmp(retention, "non-phi") != 0))
		return kms_errf(KMS_ERR_INVALID, "retention must be \"phi\" or \"non-phi\"");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_TENANT_INSERT];
	if (db_bind_text(st, 1, name, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 2, retention, -1, DB_STATIC) != DB_OK ||
	    db_bind_int64(st, 3, now) != DB_OK) {
		rc = db_fail(s, "tenant insert bind");
		stmt_release(st);
		goto out;
	}
	src = stmt_insert_id(st, &id);
	if (is_unique_violation(src)) {
		rc = kms_errf(KMS_ERR_CONFLICT, "tenant \"%s\" already exists", name);
		goto out;
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "tenant insert");
		goto out;
	}
	if (id_out != NULL)
		*id_out = id;
	rc = KMS_OK;
out:
	store_unlock(s);
	return rc;
}

kms_err store_tenant_get(struct store *s, const char *name, struct store_tenant *out)
{
	db_stmt *st = NULL;
	int src;
	kms_err rc;

	if ((rc = check_name("tenant", name)) != KMS_OK)
		return rc;
	if (out == NULL)
		return kms_errf(KMS_ERR_INVALID, "no output for tenant");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_TENANT_GET];
	if (db_bind_text(st, 1, name, -1, DB_STATIC) != DB_OK) {
		rc = db_fail(s, "tenant get bind");
		goto out;
	}
	src = db_step(st);
	if (src == DB_DONE) {
		rc = kms_errf(KMS_ERR_NOT_FOUND, "tenant \"%s\" not found", name);
		goto out;
	}
	if (src != DB_ROW) {
		rc = db_fail(s, "tenant get");
		goto out;
	}
	rc = row_tenant(st, out);
out:
	stmt_release(st);
	store_unlock(s);
	return rc;
}

kms_err store_tenant_list(struct store *s, struct store_tenant **out, size_t *n)
{
	struct store_tenant *arr = NULL;
	db_stmt *st = NULL;
	size_t cap = 0, cnt = 0;
	int src;
	void *grown;
	kms_err rc;

	if (out == NULL || n == NULL)
		return kms_errf(KMS_ERR_INVALID, "no output for tenant list");
	*out = NULL;
	*n = 0;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_TENANT_LIST];
	while ((src = db_step(st)) == DB_ROW) {
		if ((grown = grow(arr, &cap, cnt, sizeof(*arr))) == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "out of memory");
			goto out;
		}
		arr = grown;
		if ((rc = row_tenant(st, &arr[cnt])) != KMS_OK)
			goto out;
		cnt++;
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "tenant list");
		goto out;
	}
	*out = arr;
	*n = cnt;
	arr = NULL;
	rc = KMS_OK;
out:
	stmt_release(st);
	store_unlock(s);
	free(arr);
	return rc;
}

/* ---- keys ---- */

/* The master key new blobs must be wrapped under: the active row of master_keys, or 0
 * when the table is empty (a store that never saw a rotation: version 1, kmsd init's,
 * is in use, and nothing needs checking). *retiring: the version a rotation is moving
 * blobs away from, or 0. s->mu held. */
static kms_err mk_live_locked(struct store *s, uint32_t *active, uint32_t *retiring)
{
	db_stmt *st = s->st[ST_MK_LIVE];
	char state[16];
	uint32_t v = 0;
	int src;
	kms_err rc = KMS_OK;

	*active = 0;
	if (retiring != NULL)
		*retiring = 0;
	while ((src = db_step(st)) == DB_ROW) {
		if ((rc = col_u32(st, 0, &v, "master_keys")) != KMS_OK ||
		    (rc = col_text(st, 1, state, sizeof(state), "master_keys")) != KMS_OK)
			break;
		if (strcmp(state, STORE_MK_ACTIVE) == 0)
			*active = v;
		else if (retiring != NULL)
			*retiring = v;
	}
	if (rc == KMS_OK && src != DB_DONE)
		rc = db_fail(s, "master keys");
	stmt_release(st);
	return rc;
}

static kms_err version_insert_locked(struct store *s, int64_t key_id,
				     const struct store_version *v, const char *key_what)
{
	db_stmt *st = s->st[ST_VERSION_INSERT];
	uint32_t active;
	int src;
	kms_err rc;

	/* Checked inside the writer's transaction: once a rotation has made another master
	 * key active, no blob under an older one can be added behind its back (the caller
	 * wraps again under the active one and retries). */
	if ((rc = mk_live_locked(s, &active, NULL)) != KMS_OK)
		return rc;
	if (active != 0 && v->mk_version != active)
		return kms_errf(KMS_ERR_CONFLICT,
				"key versions are now wrapped under master key version %" PRIu32
				", not %" PRIu32,
				active, v->mk_version);

	if (db_bind_int64(st, 1, key_id) != DB_OK ||
	    db_bind_int64(st, 2, v->version) != DB_OK ||
	    db_bind_blob(st, 3, v->blob, (int)v->blob_len, DB_STATIC) != DB_OK ||
	    db_bind_blob(st, 4, v->mac, STORE_MAC_LEN, DB_STATIC) != DB_OK ||
	    db_bind_int64(st, 5, v->mk_version) != DB_OK ||
	    db_bind_int64(st, 6, v->created) != DB_OK) {
		rc = db_fail(s, "version insert bind");
		stmt_release(st);
		return rc;
	}
	src = stmt_exec(st);
	if (is_unique_violation(src))
		return kms_errf(KMS_ERR_CONFLICT, "%s version %" PRIu32 " already exists", key_what,
				v->version);
	if (src == DB_CONSTRAINT_FOREIGNKEY)
		return kms_errf(KMS_ERR_NOT_FOUND, "key %" PRId64 " not found", key_id);
	if (src != DB_DONE)
		return db_fail(s, "version insert");
	return KMS_OK;
}

kms_err store_key_create(struct store *s, int64_t tenant_id, const char *name, const char *type,
			 int64_t now, const struct store_version *v1, int64_t *key_id_out)
{
	db_stmt *st;
	bool in_tx = false;
	int64_t key_id = 0;
	int src;
	kms_err rc;

	if ((rc = check_name("key", name)) != KMS_OK || (rc = check_version_row(v1)) != KMS_OK)
		return rc;
	if (type == NULL || type[0] == '\0' || strnlen(type, TYPE_MAX + 1) > TYPE_MAX)
		return kms_errf(KMS_ERR_INVALID, "key type must be 1 to %d bytes", TYPE_MAX);
	if (v1->version != 1)
		return kms_errf(KMS_ERR_INVALID, "a new key starts at version 1");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = tx_begin(s)) != KMS_OK)
		goto out;
	in_tx = true;
	st = s->st[ST_KEY_INSERT];
	if (db_bind_int64(st, 1, tenant_id) != DB_OK ||
	    db_bind_text(st, 2, name, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 3, type, -1, DB_STATIC) != DB_OK ||
	    db_bind_int64(st, 4, now) != DB_OK) {
		rc = db_fail(s, "key insert bind");
		stmt_release(st);
		goto out;
	}
	src = stmt_insert_id(st, &key_id);
	if (is_unique_violation(src)) {
		rc = kms_errf(KMS_ERR_CONFLICT, "key \"%s\" already exists", name);
		goto out;
	}
	if (src == DB_CONSTRAINT_FOREIGNKEY) {
		rc = kms_errf(KMS_ERR_NOT_FOUND, "tenant %" PRId64 " not found", tenant_id);
		goto out;
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "key insert");
		goto out;
	}
	if ((rc = version_insert_locked(s, key_id, v1, "key")) != KMS_OK)
		goto out;
	if ((rc = tx_commit(s)) != KMS_OK)
		goto out;
	in_tx = false;
	if (key_id_out != NULL)
		*key_id_out = key_id;
	rc = KMS_OK;
out:
	if (in_tx)
		tx_rollback(s);
	store_unlock(s);
	return rc;
}

kms_err store_key_get(struct store *s, int64_t tenant_id, const char *name, struct store_key *out)
{
	db_stmt *st = NULL;
	int src;
	kms_err rc;

	if ((rc = check_name("key", name)) != KMS_OK)
		return rc;
	if (out == NULL)
		return kms_errf(KMS_ERR_INVALID, "no output for key");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_KEY_GET];
	if (db_bind_int64(st, 1, tenant_id) != DB_OK ||
	    db_bind_text(st, 2, name, -1, DB_STATIC) != DB_OK) {
		rc = db_fail(s, "key get bind");
		goto out;
	}
	src = db_step(st);
	if (src == DB_DONE) {
		rc = kms_errf(KMS_ERR_NOT_FOUND, "key \"%s\" not found", name);
		goto out;
	}
	if (src != DB_ROW) {
		rc = db_fail(s, "key get");
		goto out;
	}
	rc = row_key(st, out);
out:
	stmt_release(st);
	store_unlock(s);
	return rc;
}

void store_names_free(char **names, size_t n)
{
	size_t i;

	if (names == NULL)
		return;
	for (i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

kms_err store_key_list(struct store *s, int64_t tenant_id, char ***names, size_t *n)
{
	db_stmt *st = NULL;
	char **arr = NULL;
	size_t cap = 0, cnt = 0;
	bool tenant_seen = false;
	const unsigned char *t;
	int src, len;
	void *grown;
	kms_err rc;

	if (names == NULL || n == NULL)
		return kms_errf(KMS_ERR_INVALID, "no output for key list");
	*names = NULL;
	*n = 0;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_KEY_LIST];
	if (db_bind_int64(st, 1, tenant_id) != DB_OK) {
		rc = db_fail(s, "key list bind");
		goto out;
	}
	while ((src = db_step(st)) == DB_ROW) {
		tenant_seen = true;
		if (db_column_type(st, 0) == DB_NULL)
			continue; /* the tenant exists and has no keys */
		t = db_column_text(st, 0);
		len = db_column_bytes(st, 0);
		if (t == NULL || len <= 0 || len > STORE_NAME_MAX) {
			rc = db_corrupt("keys");
			goto out;
		}
		if ((grown = grow(arr, &cap, cnt, sizeof(*arr))) == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "out of memory");
			goto out;
		}
		arr = grown;
		arr[cnt] = strndup((const char *)t, (size_t)len);
		if (arr[cnt] == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "out of memory");
			goto out;
		}
		cnt++;
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "key list");
		goto out;
	}
	if (!tenant_seen) {
		rc = kms_errf(KMS_ERR_NOT_FOUND, "tenant %" PRId64 " not found", tenant_id);
		goto out;
	}
	*names = arr;
	*n = cnt;
	arr = NULL;
	cnt = 0;
	rc = KMS_OK;
out:
	stmt_release(st);
	store_unlock(s);
	store_names_free(arr, cnt);
	return rc;
}

/* The key's latest version as committed now, past any cache: what a rotation that lost
 * a compare-and-set follows. */
kms_err store_key_latest(struct store *s, int64_t key_id, uint32_t *latest)
{
	db_stmt *st;
	int src;
	kms_err rc;

	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_KEY_LATEST];
	if (db_bind_int64(st, 1, key_id) != DB_OK) {
		rc = db_fail(s, "key latest bind");
		goto out;
	}
	src = db_step(st);
	if (src == DB_DONE)
		rc = kms_errf(KMS_ERR_NOT_FOUND, "key %" PRId64 " not found", key_id);
	else if (src != DB_ROW)
		rc = db_fail(s, "key latest read");
	else
		*latest = (uint32_t)db_column_int64(st, 0);
out:
	stmt_release(st);
	store_unlock(s);
	return rc;
}

/* Compare-and-set on latest_version inside one write transaction. The SELECT check
 * gives the caller a precise CONFLICT; the guarded UPDATE and the (key_id, version)
 * primary key would each refuse a duplicate on their own, so a twin version cannot be
 * written even if another process's connection raced between our statements. */
kms_err store_key_rotate(struct store *s, int64_t key_id, const struct store_version *v)
{
	db_stmt *st = NULL;
	bool in_tx = false;
	int64_t latest;
	int src;
	kms_err rc;

	if ((rc = check_version_row(v)) != KMS_OK)
		return rc;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = tx_begin(s)) != KMS_OK)
		goto out;
	in_tx = true;

	st = s->st[ST_KEY_LATEST];
	if (db_bind_int64(st, 1, key_id) != DB_OK) {
		rc = db_fail(s, "rotate bind");
		goto out;
	}
	src = db_step(st);
	if (src == DB_DONE) {
		rc = kms_errf(KMS_ERR_NOT_FOUND, "key %" PRId64 " not found", key_id);
		goto out;
	}
	if (src != DB_ROW) {
		rc = db_fail(s, "rotate read");
		goto out;
	}
	latest = db_column_int64(st, 0);
	stmt_release(st);
	st = NULL;
	if ((int64_t)v->version != latest + 1) {
		rc = kms_errf(KMS_ERR_CONFLICT,
			      "key version %" PRIu32 " is not next: latest is %" PRId64,
			      v->version, latest);
		goto out;
	}

	if ((rc = version_insert_locked(s, key_id, v, "key")) != KMS_OK)
		goto out;

	st = s->st[ST_KEY_SET_LATEST];
	if (db_bind_int64(st, 1, key_id) != DB_OK ||
	    db_bind_int64(st, 2, v->version) != DB_OK ||
	    db_bind_int64(st, 3, latest) != DB_OK) {
		rc = db_fail(s, "rotate update bind");
		goto out;
	}
	src = stmt_exec(st);
	st = NULL;
	if (src != DB_DONE) {
		rc = db_fail(s, "rotate update");
		goto out;
	}
	if (db_changes(s->db) != 1) {
		rc = kms_errf(KMS_ERR_CONFLICT, "key %" PRId64 " was rotated concurrently", key_id);
		goto out;
	}
	if ((rc = tx_commit(s)) != KMS_OK)
		goto out;
	in_tx = false;
	rc = KMS_OK;
out:
	stmt_release(st);
	if (in_tx)
		tx_rollback(s);
	store_unlock(s);
	return rc;
}

kms_err store_version_get(struct store *s, int64_t key_id, uint32_t version,
			  struct store_version *out)
{
	db_stmt *st = NULL;
	int src;
	kms_err rc;

	if (out == NULL)
		return kms_errf(KMS_ERR_INVALID, "no output for key version");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_VERSION_GET];
	if (db_bind_int64(st, 1, key_id) != DB_OK ||
	    db_bind_int64(st, 2, version) != DB_OK) {
		rc = db_fail(s, "version get bind");
		goto out;
	}
	src = db_step(st);
	if (src == DB_DONE) {
		rc = kms_errf(KMS_ERR_NOT_FOUND, "key version %" PRIu32 " not found", version);
		goto out;
	}
	if (src != DB_ROW) {
		rc = db_fail(s, "version get");
		goto out;
	}
	rc = row_version(st, out);
out:
	stmt_release(st);
	store_unlock(s);
	return rc;
}

kms_err store_version_list(struct store *s, int64_t key_id, struct store_version **out, size_t *n)
{
	struct store_version *arr = NULL;
	db_stmt *st = NULL;
	size_t cap = 0, cnt = 0;
	int src;
	void *grown;
	kms_err rc;

	if (out == NULL || n == NULL)
		return kms_errf(KMS_ERR_INVALID, "no output for version list");
	*out = NULL;
	*n = 0;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_VERSION_LIST];
	if (db_bind_int64(st, 1, key_id) != DB_OK) {
		rc = db_fail(s, "version list bind");
		goto out;
	}
	while ((src = db_step(st)) == DB_ROW) {
		if ((grown = grow(arr, &cap, cnt, sizeof(*arr))) == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "out of memory");
			goto out;
		}
		arr = grown;
		if ((rc = row_version(st, &arr[cnt])) != KMS_OK)
			goto out;
		cnt++;
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "version list");
		goto out;
	}
	/* A key is created with version 1 in the same transaction, so no rows means no key. */
	if (cnt == 0) {
		rc = kms_errf(KMS_ERR_NOT_FOUND, "key %" PRId64 " not found", key_id);
		goto out;
	}
	*out = arr;
	*n = cnt;
	arr = NULL;
	rc = KMS_OK;
out:
	stmt_release(st);
	store_unlock(s);
	free(arr);
	return rc;
}

/* ---- principals ---- */

/* The new principal's MAC; its id is known only after the insert. */
static kms_err am_principal_seal_locked(struct store *s, int64_t id, const char *name, const char *role)
{
	struct store_am_field f[] = {AM_INT(id), AM_STR(name), AM_STR(role)};
	db_stmt *st = NULL;
	kms_err rc;

	if (s->am_mac == NULL)
		return KMS_OK;
	if (db_prepare(s->db, "UPDATE principals SET mac = ?1 WHERE id = ?2", false, &st) != DB_OK) {
		rc = db_fail(s, "principal mac prepare");
		goto out;
	}
	if ((rc = am_bind_locked(s, st, 1, STORE_AM_PRINCIPAL, f, 3)) != KMS_OK)
		goto out;
	if (db_bind_int64(st, 2, id) != DB_OK || db_step(st) != DB_DONE)
		rc = db_fail(s, "principal mac");
out:
	db_finalize(st);
	return rc;
}

kms_err store_principal_create(struct store *s, const char *name, const char *role,
			       const int64_t *tenant_ids, size_t n_tenants, int64_t now,
			       int64_t *id_out)
{
	db_stmt *st;
	bool in_tx = false, service;
	int64_t id = 0;
	size_t i;
	int src;
	kms_err rc;

	if ((rc = check_name("principal", name)) != KMS_OK)
		return rc;
	if (role == NULL || (strcmp(role, "admin") != 0 && strcmp(role, "service") != 0 &&
			     strcmp(role, "auditor") != 0))
		return kms_errf(KMS_ERR_INVALID, "role must be \"admin\", \"service\" or \"auditor\"");
	service = strcmp(role, "service") == 0;
	if (service && n_tenants > 0 && tenant_ids == NULL)
		return kms_errf(KMS_ERR_INVALID, "tenant list missing");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = tx_begin(s)) != KMS_OK)
		goto out;
	in_tx = true;
	st = s->st[ST_PRINCIPAL_INSERT];
	if (db_bind_text(st, 1, name, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 2, role, -1, DB_STATIC) != DB_OK ||
	    db_bind_int64(st, 3, now) != DB_OK) {
		rc = db_fail(s, "principal insert bind");
		stmt_release(st);
		goto out;
	}
	src = stmt_insert_id(st, &id);
	if (is_unique_violation(src)) {
		rc = kms_errf(KMS_ERR_CONFLICT, "principal \"%s\" already exists", name);
		goto out;
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "principal insert");
		goto out;
	}
	if ((rc = am_principal_seal_locked(s, id, name, role)) != KMS_OK)
		goto out;
	/* Admins are not scoped to tenants (store.h); storing ids for them would only
	 * suggest a restriction that nothing enforces. */
	for (i = 0; service && i < n_tenants; i++) {
		struct store_am_field f[] = {AM_INT(id), AM_INT(tenant_ids[i])};

		st = s->st[ST_PRINCIPAL_TENANT_INSERT];
		if (db_bind_int64(st, 1, id) != DB_OK ||
		    db_bind_int64(st, 2, tenant_ids[i]) != DB_OK) {
			rc = db_fail(s, "principal tenant bind");
			stmt_release(st);
			goto out;
		}
		if ((rc = am_bind_locked(s, st, 3, STORE_AM_TENANT, f, 2)) != KMS_OK) {
			stmt_release(st);
			goto out;
		}
		src = stmt_exec(st);
		if (src == DB_CONSTRAINT_FOREIGNKEY) {
			rc = kms_errf(KMS_ERR_NOT_FOUND, "tenant %" PRId64 " not found",
				      tenant_ids[i]);
			goto out;
		}
		if (is_unique_violation(src)) {
			rc = kms_errf(KMS_ERR_INVALID, "tenant %" PRId64 " listed twice",
				      tenant_ids[i]);
			goto out;
		}
		if (src != DB_DONE) {
			rc = db_fail(s, "principal tenant insert");
			goto out;
		}
	}
	if ((rc = tx_commit(s)) != KMS_OK)
		goto out;
	in_tx = false;
	if (id_out != NULL)
		*id_out = id;
	rc = KMS_OK;
out:
	if (in_tx)
		tx_rollback(s);
	store_unlock(s);
	return rc;
}

static kms_err principal_get_common(struct store *s, db_stmt *st, const char *what,
				    struct store_principal *out)
{
	int src;

	src = db_step(st);
	if (src == DB_DONE)
		return kms_errf(KMS_ERR_NOT_FOUND, "principal %s not found", what);
	if (src != DB_ROW)
		return db_fail(s, "principal get");
	kms_err rc = row_principal(st, out);
	if (rc == KMS_OK)
		rc = am_check_principal_locked(s, st, out);
	if (rc != KMS_OK)
		memset(out, 0, sizeof(*out));
	return rc;
}

kms_err store_principal_get(struct store *s, const char *name, struct store_principal *out)
{
	char what[STORE_NAME_MAX + 3];
	db_stmt *st = NULL;
	kms_err rc;

	if ((rc = check_name("principal", name)) != KMS_OK)
		return rc;
	if (out == NULL)
		return kms_errf(KMS_ERR_INVALID, "no output for principal");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_PRINCIPAL_GET];
	if (db_bind_text(st, 1, name, -1, DB_STATIC) != DB_OK) {
		rc = db_fail(s, "principal get bind");
		goto out;
	}
	snprintf(what, sizeof(what), "\"%s\"", name);
	rc = principal_get_common(s, st, what, out);
out:
	stmt_release(st);
	store_unlock(s);
	return rc;
}

kms_err store_principal_get_id(struct store *s, int64_t id, struct store_principal *out)
{
	char what[32];
	db_stmt *st = NULL;
	kms_err rc;

	if (out == NULL)
		return kms_errf(KMS_ERR_INVALID, "no output for principal");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_PRINCIPAL_GET_ID];
	if (db_bind_int64(st, 1, id) != DB_OK) {
		rc = db_fail(s, "principal get bind");
		goto out;
	}
	snprintf(what, sizeof(what), "%" PRId64, id);
	rc = principal_get_common(s, st, what, out);
out:
	stmt_release(st);
	store_unlock(s);
	return rc;
}

kms_err store_principal_tenants(struct store *s, int64_t principal_id, int64_t **out, size_t *n)
{
	db_stmt *st = NULL;
	int64_t *arr = NULL;
	size_t cap = 0, cnt = 0;
	bool principal_seen = false;
	int src;
	void *grown;
	kms_err rc;

	if (out == NULL || n == NULL)
		return kms_errf(KMS_ERR_INVALID, "no output for principal tenants");
	*out = NULL;
	*n = 0;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_PRINCIPAL_TENANTS];
	if (db_bind_int64(st, 1, principal_id) != DB_OK) {
		rc = db_fail(s, "principal tenants bind");
		goto out;
	}
	while ((src = db_step(st)) == DB_ROW) {
		principal_seen = true;
		if (db_column_type(st, 0) == DB_NULL)
			continue; /* principal without tenants */
		{
			/* A scope row added outside kmsd refuses the principal as a whole. */
			int64_t tid = db_column_int64(st, 0);
			struct store_am_field f[] = {AM_INT(principal_id), AM_INT(tid)};
			char row[64];

			snprintf(row, sizeof(row), "principal_id=%" PRId64 ",tenant_id=%" PRId64, principal_id, tid);
			if ((rc = am_check_locked(s, st, 1, STORE_AM_TENANT, f, 2, row)) != KMS_OK)
				goto out;
		}
		if ((grown = grow(arr, &cap, cnt, sizeof(*arr))) == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "out of memory");
			goto out;
		}
		arr = grown;
		arr[cnt++] = db_column_int64(st, 0);
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "principal tenants");
		goto out;
	}
	if (!principal_seen) {
		rc = kms_errf(KMS_ERR_NOT_FOUND, "principal %" PRId64 " not found", principal_id);
		goto out;
	}
	*out = arr;
	*n = cnt;
	arr = NULL;
	rc = KMS_OK;
out:
	stmt_release(st);
	store_unlock(s);
	free(arr);
	return rc;
}

kms_err store_principal_list(struct store *s, struct store_principal **out, size_t *n)
{
	struct store_principal *arr = NULL;
	db_stmt *st = NULL;
	size_t cap = 0, cnt = 0;
	int src;
	void *grown;
	kms_err rc;

	if (out == NULL || n == NULL)
		return kms_errf(KMS_ERR_INVALID, "no output for principal list");
	*out = NULL;
	*n = 0;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_PRINCIPAL_LIST];
	while ((src = db_step(st)) == DB_ROW) {
		if ((grown = grow(arr, &cap, cnt, sizeof(*arr))) == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "out of memory");
			goto out;
		}
		arr = grown;
		if ((rc = row_principal(st, &arr[cnt])) != KMS_OK)
			goto out;
		cnt++;
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "principal list");
		goto out;
	}
	*out = arr;
	*n = cnt;
	arr = NULL;
	rc = KMS_OK;
out:
	stmt_release(st);
	store_unlock(s);
	free(arr);
	return rc;
}

/* ---- API tokens ---- */

static kms_err check_accessor(const char *accessor, size_t cap)
{
	size_t len = strnlen(accessor, cap);

	if (len == 0 || len > STORE_ACCESSOR_MAX)
		return kms_errf(KMS_ERR_INVALID, "token accessor must be 1 to %d bytes",
				STORE_ACCESSOR_MAX);
	return KMS_OK;
}

kms_err store_token_create(struct store *s, const struct store_token *t)
{
	db_stmt *st;
	int src;
	kms_err rc;

	if (t == NULL)
		return kms_errf(KMS_ERR_INVALID, "token missing");
	if ((rc = check_accessor(t->accessor, sizeof(t->accessor))) != KMS_OK)
		return rc;
	if (t->expires < 0)
		return kms_errf(KMS_ERR_INVALID, "token expiry must not be negative");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_TOKEN_INSERT];
	if (db_bind_text(st, 1, t->accessor, -1, DB_STATIC) != DB_OK ||
	    db_bind_int64(st, 2, t->principal_id) != DB_OK ||
	    db_bind_blob(st, 3, t->hash, STORE_HASH_LEN, DB_STATIC) != DB_OK ||
	    db_bind_int64(st, 4, t->created) != DB_OK ||
	    db_bind_int64(st, 5, t->expires) != DB_OK ||
	    db_bind_int(st, 6, t->revoked != 0) != DB_OK) {
		rc = db_fail(s, "token insert bind");
		stmt_release(st);
		goto out;
	}
	{
		struct store_am_field f[] = {AM_STR(t->accessor), AM_INT(t->principal_id),
					     AM_BYTES(t->hash, STORE_HASH_LEN), AM_INT(t->expires),
					     AM_INT(t->revoked != 0)};

		if ((rc = am_bind_locked(s, st, 7, STORE_AM_TOKEN, f, 5)) != KMS_OK) {
			stmt_release(st);
			goto out;
		}
	}
	src = stmt_exec(st);
	if (is_unique_violation(src)) {
		rc = kms_errf(KMS_ERR_CONFLICT, "token accessor \"%s\" already exists", t->accessor);
		goto out;
	}
	if (src == DB_CONSTRAINT_FOREIGNKEY) {
		rc = kms_errf(KMS_ERR_NOT_FOUND, "principal %" PRId64 " not found", t->principal_id);
		goto out;
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "token insert");
		goto out;
	}
	rc = KMS_OK;
out:
	store_unlock(s);
	return rc;
}

kms_err store_token_get(struct store *s, const char *accessor, struct store_token *out)
{
	db_stmt *st = NULL;
	int src;
	kms_err rc;

	if (accessor == NULL || out == NULL)
		return kms_errf(KMS_ERR_INVALID, "token accessor missing");
	if ((rc = check_accessor(accessor, STORE_ACCESSOR_MAX + 1)) != KMS_OK)
		return rc;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_TOKEN_GET];
	if (db_bind_text(st, 1, accessor, -1, DB_STATIC) != DB_OK) {
		rc = db_fail(s, "token get bind");
		goto out;
	}
	src = db_step(st);
	if (src == DB_DONE) {
		/* The accessor comes from a client; keep it out of the detail. */
		rc = kms_errf(KMS_ERR_NOT_FOUND, "token not found");
		goto out;
	}
	if (src != DB_ROW) {
		rc = db_fail(s, "token get");
		goto out;
	}
	memset(out, 0, sizeof(*out));
	if ((rc = col_text(st, 0, out->accessor, sizeof(out->accessor), "api_tokens")) !=
		    KMS_OK ||
	    (rc = col_blob(st, 2, out->hash, STORE_HASH_LEN, STORE_HASH_LEN, NULL,
			   "api_tokens")) != KMS_OK)
		goto out;
	out->principal_id = db_column_int64(st, 1);
	out->created = db_column_int64(st, 3);
	out->expires = db_column_int64(st, 4);
	out->revoked = db_column_int64(st, 5) != 0;
	out->last_used = db_column_int64(st, 6);
	if ((rc = am_check_token_locked(s, st, out)) != KMS_OK)
		memset(out, 0, sizeof(*out));
out:
	stmt_release(st);
	store_unlock(s);
	return rc;
}

kms_err store_token_touch(struct store *s, const char *accessor, int64_t when)
{
	db_stmt *st;
	kms_err rc;

	if (accessor == NULL)
		return kms_errf(KMS_ERR_INVALID, "token accessor missing");
	if ((rc = check_accessor(accessor, STORE_ACCESSOR_MAX + 1)) != KMS_OK)
		return rc;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_TOKEN_TOUCH];
	if (db_bind_text(st, 1, accessor, -1, DB_STATIC) != DB_OK ||
	    db_bind_int64(st, 2, when) != DB_OK) {
		rc = db_fail(s, "token touch bind");
		stmt_release(st);
		goto out;
	}
	rc = stmt_exec(st) == DB_DONE ? KMS_OK : db_fail(s, "token touch");
	if (rc == KMS_OK)
		s->quiet_changes += db_changes(s->db); /* see store_change_stamp */
out:
	store_unlock(s);
	return rc;
}

kms_err store_token_revoke(struct store *s, const char *accessor)
{
	struct store_token t;
	db_stmt *st;
	bool in_tx = false;
	int src;
	kms_err rc;

	if (accessor == NULL)
		return kms_errf(KMS_ERR_INVALID, "token accessor missing");
	if ((rc = check_accessor(accessor, STORE_ACCESSOR_MAX + 1)) != KMS_OK)
		return rc;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = tx_begin(s)) != KMS_OK)
		goto out;
	in_tx = true;
	/* Read and checked first: the new MAC covers the row as it is, so a row edited
	 * outside kmsd is refused rather than given a fresh MAC. */
	st = s->st[ST_TOKEN_GET];
	if (db_bind_text(st, 1, accessor, -1, DB_STATIC) != DB_OK) {
		rc = db_fail(s, "token revoke bind");
		stmt_release(st);
		goto out;
	}
	src = db_step(st);
	if (src != DB_ROW) {
		rc = src == DB_DONE ? kms_errf(KMS_ERR_NOT_FOUND, "token not found") : db_fail(s, "token revoke");
		stmt_release(st);
		goto out;
	}
	memset(&t, 0, sizeof(t));
	if ((rc = col_text(st, 0, t.accessor, sizeof(t.accessor), "api_tokens")) == KMS_OK &&
	    (rc = col_blob(st, 2, t.hash, STORE_HASH_LEN, STORE_HASH_LEN, NULL, "api_tokens")) == KMS_OK) {
		t.principal_id = db_column_int64(st, 1);
		t.expires = db_column_int64(st, 4);
		t.revoked = db_column_int64(st, 5) != 0;
		rc = am_check_token_locked(s, st, &t);
	}
	stmt_release(st);
	if (rc != KMS_OK)
		goto out;
	st = s->st[ST_TOKEN_REVOKE];
	{
		struct store_am_field f[] = {AM_STR(t.accessor), AM_INT(t.principal_id),
					     AM_BYTES(t.hash, STORE_HASH_LEN), AM_INT(t.expires), AM_INT(1)};

		if (db_bind_text(st, 1, accessor, -1, DB_STATIC) != DB_OK) {
			rc = db_fail(s, "token revoke bind");
			stmt_release(st);
			goto out;
		}
		if ((rc = am_bind_locked(s, st, 2, STORE_AM_TOKEN, f, 5)) != KMS_OK) {
			stmt_release(st);
			goto out;
		}
	}
	if (stmt_exec(st) != DB_DONE) {
		rc = db_fail(s, "token revoke");
		goto out;
	}
	if ((rc = tx_commit(s)) != KMS_OK)
		goto out;
	in_tx = false;
out:
	if (in_tx)
		tx_rollback(s);
	kms_wipe(&t, sizeof(t));
	store_unlock(s);
	return rc;
}

/* ---- key lifecycle ---- */

static kms_err event_insert_locked(struct store *s, int64_t key_id, const struct store_event *ev)
{
	db_stmt *st = s->st[ST_EVENT_INSERT];
	int src;

	if (ev == NULL)
		return kms_errf(KMS_ERR_INVALID, "key event missing");
	if (db_bind_int64(st, 1, key_id) != DB_OK ||
	    db_bind_int64(st, 2, ev->version) != DB_OK ||
	    db_bind_text(st, 3, ev->event, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 4, ev->principal, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 5, ev->reason, -1, DB_STATIC) != DB_OK ||
	    db_bind_int64(st, 6, ev->time) != DB_OK) {
		kms_err rc = db_fail(s, "event bind");

		stmt_release(st);
		return rc;
	}
	src = stmt_exec(st);
	if (src == DB_CONSTRAINT_FOREIGNKEY)
		return kms_errf(KMS_ERR_NOT_FOUND, "key %" PRId64 " not found", key_id);
	if (src != DB_DONE)
		return db_fail(s, "event insert");
	return KMS_OK;
}

/* Runs one prepared UPDATE (already bound) and the event insert in a transaction.
 * Zero changed rows -> `none` (an error the caller chose), nothing written. */
static kms_err receipt_insert_locked(struct store *s, int64_t key_id, uint32_t version,
				     const struct store_receipt *r)
{
	db_stmt *st = s->st[ST_RECEIPT_PUT];
	int src;

	if (r->text == NULL || r->sig == NULL || r->sig_len == 0 || r->sig_len > 256)
		return kms_errf(KMS_ERR_INVALID, "invalid receipt");
	if (db_bind_int64(st, 1, key_id) != DB_OK || db_bind_int64(st, 2, version) != DB_OK ||
	    db_bind_text(st, 3, r->text, -1, DB_STATIC) != DB_OK ||
	    db_bind_blob(st, 4, r->sig, (int)r->sig_len, DB_STATIC) != DB_OK ||
	    db_bind_int64(st, 5, r->now) != DB_OK) {
		stmt_release(st);
		return db_fail(s, "receipt bind");
	}
	src = stmt_exec(st);
	if (is_unique_violation(src))
		return kms_errf(KMS_ERR_CONFLICT, "a receipt for this version exists");
	if (src != DB_DONE)
		return db_fail(s, "receipt insert");
	return KMS_OK;
}

/* The update st (bound), its event and, when receipt is not NULL, the erasure receipt
 * of version, in one transaction. */
static kms_err update_with_event_receipt(struct store *s, db_stmt *st, int64_t key_id,
					 const struct store_event *ev, kms_err none, const char *none_msg,
					 const char *what, uint32_t version,
					 const struct store_receipt *receipt)
{
	bool in_tx = false;
	int src;
	kms_err rc;

	if ((rc = tx_begin(s)) != KMS_OK) {
		stmt_release(st);
		return rc;
	}
	in_tx = true;
	src = stmt_exec(st);
	if (src != DB_DONE) {
		rc = db_fail(s, what);
		goto out;
	}
	if (db_changes(s->db) != 1) {
		rc = none_msg ? kms_errf(none, "%s", none_msg) : none;
		goto out;
	}
	if ((rc = event_insert_locked(s, key_id, ev)) != KMS_OK)
		goto out;
	if (receipt != NULL && (rc = receipt_insert_locked(s, key_id, version, receipt)) != KMS_OK)
		goto out;
	if ((rc = tx_commit(s)) != KMS_OK)
		goto out;
	in_tx = false;
out:
	if (in_tx)
		tx_rollback(s);
	return rc;
}

static kms_err update_with_event(struct store *s, db_stmt *st, int64_t key_id,
				 const struct store_event *ev, kms_err none, const char *none_msg,
				 const char *what)
{
	return update_with_event_receipt(s, st, key_id, ev, none, none_msg, what, 0, NULL);
}

kms_err store_key_config(struct store *s, int64_t key_id, const struct store_key *cfg,
			 const struct store_event *ev)
{
	db_stmt *st;
	kms_err rc;

	if (cfg == NULL)
		return kms_errf(KMS_ERR_INVALID, "key config missing");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_KEY_CONFIG];
	if (db_bind_int64(st, 1, key_id) != DB_OK ||
	    db_bind_int64(st, 2, cfg->min_decryption_version) != DB_OK ||
	    db_bind_int64(st, 3, cfg->min_encryption_version) != DB_OK ||
	    db_bind_int64(st, 4, cfg->deletion_allowed ? 1 : 0) != DB_OK ||
	    db_bind_int64(st, 5, cfg->auto_rotate_period) != DB_OK) {
		rc = db_fail(s, "key config bind");
		stmt_release(st);
		goto out;
	}
	rc = update_with_event(s, st, key_id, ev, KMS_ERR_NOT_FOUND, "key not found", "key config");
out:
	store_unlock(s);
	return rc;
}

kms_err store_key_set_revoked(struct store *s, int64_t key_id, int revoked, const struct store_event *ev)
{
	db_stmt *st;
	kms_err rc;

	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_KEY_REVOKED];
	if (db_bind_int64(st, 1, key_id) != DB_OK ||
	    db_bind_int64(st, 2, revoked ? 1 : 0) != DB_OK ||
	    db_bind_int64(st, 3, revoked ? 0 : 1) != DB_OK) {
		rc = db_fail(s, "key revoke bind");
		stmt_release(st);
		goto out;
	}
	rc = update_with_event(s, st, key_id, ev, KMS_ERR_CONFLICT,
			       revoked ? "key is already revoked" : "key is not revoked", "key revoke");
out:
	store_unlock(s);
	return rc;
}

static bool valid_state(const char *st)
{
	return st != NULL && (strcmp(st, STORE_STATE_ENABLED) == 0 || strcmp(st, STORE_STATE_DISABLED) == 0 ||
			      strcmp(st, STORE_STATE_PENDING) == 0 || strcmp(st, STORE_STATE_DESTROYED) == 0);
}

kms_err store_version_transition(struct store *s, int64_t key_id, uint32_t version, const char *from,
				 const char *to, int64_t destroy_after, const struct store_event *ev)
{
	db_stmt *st;
	char cur[24] = "";
	int src;
	kms_err rc;

	if (!valid_state(from) || !valid_state(to))
		return kms_errf(KMS_ERR_INVALID, "unknown key version state");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_VERSION_STATE_SET];
	if (db_bind_int64(st, 1, key_id) != DB_OK || db_bind_int64(st, 2, version) != DB_OK ||
	    db_bind_text(st, 3, to, -1, DB_STATIC) != DB_OK ||
	    db_bind_int64(st, 4, destroy_after) != DB_OK ||
	    db_bind_text(st, 5, from, -1, DB_STATIC) != DB_OK) {
		rc = db_fail(s, "version state bind");
		stmt_release(st);
		goto out;
	}
	rc = update_with_event(s, st, key_id, ev, KMS_ERR_CONFLICT, NULL, "version state");
	if (rc != KMS_ERR_CONFLICT)
		goto out;
	/* Say why: no such version, or in which state it is. */
	st = s->st[ST_VERSION_STATE_GET];
	if (db_bind_int64(st, 1, key_id) != DB_OK || db_bind_int64(st, 2, version) != DB_OK) {
		rc = db_fail(s, "version state get bind");
		stmt_release(st);
		goto out;
	}
	src = db_step(st);
	if (src == DB_ROW)
		rc = col_text(st, 0, cur, sizeof(cur), "key_versions");
	else if (src == DB_DONE)
		rc = kms_errf(KMS_ERR_NOT_FOUND, "key version %" PRIu32 " not found", version);
	else
		rc = db_fail(s, "version state get");
	stmt_release(st);
	if (rc == KMS_OK)
		rc = kms_errf(KMS_ERR_CONFLICT, "key version %" PRIu32 " is %s, not %s", version, cur, from);
out:
	store_unlock(s);
	return rc;
}

kms_err store_versions_transition(struct store *s, int64_t key_id, size_t n, const uint32_t *versions,
				  const char *const *from, const char *to, int64_t destroy_after,
				  const struct store_event *ev)
{
	struct store_event e;
	db_stmt *st;
	bool in_tx = false;
	kms_err rc;

	if (ev == NULL || !valid_state(to))
		return kms_errf(KMS_ERR_INVALID, "version transition: bad arguments");
	for (size_t i = 0; i < n; i++)
		if (!valid_state(from[i]))
			return kms_errf(KMS_ERR_INVALID, "unknown key version state");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = tx_begin(s)) != KMS_OK)
		goto out;
	in_tx = true;
	e = *ev;
	for (size_t i = 0; i < n; i++) {
		st = s->st[ST_VERSION_STATE_SET];
		if (db_bind_int64(st, 1, key_id) != DB_OK ||
		    db_bind_int64(st, 2, versions[i]) != DB_OK ||
		    db_bind_text(st, 3, to, -1, DB_STATIC) != DB_OK ||
		    db_bind_int64(st, 4, destroy_after) != DB_OK ||
		    db_bind_text(st, 5, from[i], -1, DB_STATIC) != DB_OK) {
			rc = db_fail(s, "version state bind");
			stmt_release(st);
			goto out;
		}
		if (stmt_exec(st) != DB_DONE) {
			rc = db_fail(s, "version state");
			goto out;
		}
		if (db_changes(s->db) != 1) {
			rc = kms_errf(KMS_ERR_CONFLICT, "key version %" PRIu32 " changed meanwhile; nothing was changed",
				      versions[i]);
			goto out;
		}
		e.version = versions[i];
		if ((rc = event_insert_locked(s, key_id, &e)) != KMS_OK)
			goto out;
	}
	if ((rc = tx_commit(s)) != KMS_OK)
		goto out;
	in_tx = false;
out:
	if (in_tx)
		tx_rollback(s);
	store_unlock(s);
	return rc;
}

kms_err store_key_events(struct store *s, int64_t key_id, struct store_event **out, size_t *n)
{
	struct store_event *arr = NULL;
	size_t cap = 0, cnt = 0;
	db_stmt *st;
	int src;
	kms_err rc;

	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_EVENT_LIST];
	if (db_bind_int64(st, 1, key_id) != DB_OK) {
		rc = db_fail(s, "events bind");
		goto out;
	}
	while ((src = db_step(st)) == DB_ROW) {
		struct store_event *e;
		void *g = grow(arr, &cap, cnt + 1, sizeof(*arr));
		if (g == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "events");
			goto out;
		}
		arr = g;
		e = &arr[cnt];
		memset(e, 0, sizeof(*e));
		if ((rc = col_u32(st, 0, &e->version, "key_events")) != KMS_OK ||
		    (rc = col_text(st, 1, e->event, sizeof(e->event), "key_events")) != KMS_OK ||
		    (rc = col_text(st, 2, e->principal, sizeof(e->principal), "key_events")) != KMS_OK ||
		    (rc = col_text(st, 3, e->reason, sizeof(e->reason), "key_events")) != KMS_OK)
			goto out;
		e->time = db_column_int64(st, 4);
		cnt++;
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "events list");
		goto out;
	}
	*out = arr;
	*n = cnt;
	arr = NULL;
	rc = KMS_OK;
out:
	free(arr);
	stmt_release(st);
	store_unlock(s);
	return rc;
}

kms_err store_key_set_legal_hold(struct store *s, int64_t key_id, int hold, const struct store_event *ev)
{
	db_stmt *st;
	kms_err rc;

	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_KEY_HOLD];
	if (db_bind_int64(st, 1, key_id) != DB_OK || db_bind_int64(st, 2, hold ? 1 : 0) != DB_OK ||
	    db_bind_int64(st, 3, hold ? 0 : 1) != DB_OK) {
		rc = db_fail(s, "legal hold bind");
		stmt_release(st);
		goto out;
	}
	rc = update_with_event(s, st, key_id, ev, KMS_ERR_CONFLICT,
			       hold ? "key is already under legal hold" : "key is not under legal hold",
			       "legal hold");
out:
	store_unlock(s);
	return rc;
}

kms_err store_tenant_config(struct store *s, int64_t tenant_id, const struct store_tenant *cfg)
{
	db_stmt *st;
	int src;
	kms_err rc;

	if (cfg == NULL || cfg->retention_period < 0 || cfg->min_destroy_wait < 604800)
		return kms_errf(KMS_ERR_INVALID, "invalid tenant retention settings");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_TENANT_CONFIG];
	if (db_bind_int64(st, 1, tenant_id) != DB_OK ||
	    db_bind_int64(st, 2, cfg->retention_period) != DB_OK ||
	    db_bind_int64(st, 3, cfg->min_destroy_wait) != DB_OK ||
	    db_bind_int64(st, 4, cfg->legal_hold ? 1 : 0) != DB_OK) {
		rc = db_fail(s, "tenant config bind");
		stmt_release(st);
		goto out;
	}
	src = stmt_exec(st);
	if (src != DB_DONE)
		rc = db_fail(s, "tenant config");
	else if (db_changes(s->db) != 1)
		rc = kms_errf(KMS_ERR_NOT_FOUND, "tenant not found");
	else
		rc = KMS_OK;
out:
	store_unlock(s);
	return rc;
}

kms_err store_version_destroy(struct store *s, int64_t key_id, uint32_t version, const struct store_event *ev,
			      const struct store_receipt *receipt)
{
	db_stmt *st;
	int src, logged = 0, ckpt = 0;
	kms_err rc;

	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_VERSION_DESTROY];
	if (db_bind_int64(st, 1, key_id) != DB_OK || db_bind_int64(st, 2, version) != DB_OK) {
		rc = db_fail(s, "destroy bind");
		stmt_release(st);
		goto out;
	}
	rc = update_with_event_receipt(s, st, key_id, ev, KMS_ERR_CONFLICT, "key version is not pending destruction",
				       "destroy", version, receipt);
	if (rc != KMS_OK)
		goto out;
	/* The WAL still holds page images with the blob until checkpointed; TRUNCATE copies
	 * them into the database (where secure_delete zeroed the cell) and empties the WAL. */
	if (db_backend(s->db) != DB_SQLITE)
		goto out; /* PostgreSQL: the old tuple stays until VACUUM (docs/OPERATIONS.md) */
	src = sqlite3_wal_checkpoint_v2(db_sqlite_handle(s->db), NULL, SQLITE_CHECKPOINT_TRUNCATE, &logged, &ckpt);
	if (src != DB_OK || logged != ckpt) {
		kms_warn("store: WAL checkpoint after destroying a key version did not complete (sqlite %d, "
			 "%d of %d frames); the old blob may remain in the WAL until the next checkpoint",
			 src, ckpt, logged);
	}
out:
	store_unlock(s);
	return rc;
}

kms_err store_due_destructions(struct store *s, int64_t now, struct store_due **out, size_t *n)
{
	struct store_due *arr = NULL;
	size_t cap = 0, cnt = 0;
	db_stmt *st;
	int src;
	kms_err rc;

	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_DUE_LIST];
	if (db_bind_int64(st, 1, now) != DB_OK) {
		rc = db_fail(s, "due bind");
		goto out;
	}
	while ((src = db_step(st)) == DB_ROW) {
		void *g = grow(arr, &cap, cnt + 1, sizeof(*arr));
		if (g == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "due list");
			goto out;
		}
		arr = g;
		memset(&arr[cnt], 0, sizeof(arr[cnt]));
		arr[cnt].key_id = db_column_int64(st, 0);
		if ((rc = col_u32(st, 1, &arr[cnt].version, "key_versions")) != KMS_OK)
			goto out;
		arr[cnt].destroy_after = db_column_int64(st, 2);
		if ((rc = col_text(st, 3, arr[cnt].tenant, sizeof(arr[cnt].tenant), "tenants")) != KMS_OK ||
		    (rc = col_text(st, 4, arr[cnt].key, sizeof(arr[cnt].key), "keys")) != KMS_OK)
			goto out;
		cnt++;
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "due list");
		goto out;
	}
	*out = arr;
	*n = cnt;
	arr = NULL;
	rc = KMS_OK;
out:
	free(arr);
	stmt_release(st);
	store_unlock(s);
	return rc;
}

kms_err store_policy_put(struct store *s, int64_t version, const char *text, const char *principal, int64_t now)
{
	db_stmt *st;
	bool in_tx = false;
	int64_t max;
	int src;
	kms_err rc;

	if (text == NULL || principal == NULL || version < 1)
		return kms_errf(KMS_ERR_INVALID, "invalid policy row");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = tx_begin(s)) != KMS_OK)
		goto out;
	in_tx = true;
	st = s->st[ST_POLICY_MAX];
	src = db_step(st);
	max = src == DB_ROW ? db_column_int64(st, 0) : -1;
	stmt_release(st);
	if (src != DB_ROW) {
		rc = db_fail(s, "policy max");
		goto out;
	}
	if (version <= max) {
		rc = kms_errf(KMS_ERR_CONFLICT, "policy version %lld is not newer than the current version %lld",
			      (long long)version, (long long)max);
		goto out;
	}
	st = s->st[ST_POLICY_INSERT];
	if (db_bind_int64(st, 1, version) != DB_OK ||
	    db_bind_text(st, 2, text, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 3, principal, -1, DB_STATIC) != DB_OK ||
	    db_bind_int64(st, 4, now) != DB_OK) {
		rc = db_fail(s, "policy bind");
		stmt_release(st);
		goto out;
	}
	{
		struct store_am_field f[] = {AM_INT(version), AM_STR(text)};

		if ((rc = am_bind_locked(s, st, 5, STORE_AM_POLICY, f, 2)) != KMS_OK) {
			stmt_release(st);
			goto out;
		}
	}
	src = stmt_exec(st);
	if (src != DB_DONE) {
		rc = db_fail(s, "policy insert");
		goto out;
	}
	if ((rc = tx_commit(s)) != KMS_OK)
		goto out;
	in_tx = false;
out:
	if (in_tx)
		tx_rollback(s);
	store_unlock(s);
	return rc;
}

kms_err store_policy_latest(struct store *s, int64_t *version, char **text)
{
	db_stmt *st;
	const unsigned char *t;
	int src;
	kms_err rc;

	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_POLICY_LATEST];
	src = db_step(st);
	if (src == DB_DONE) {
		rc = kms_errf(KMS_ERR_NOT_FOUND, "no stored policy");
	} else if (src != DB_ROW) {
		rc = db_fail(s, "policy latest");
	} else {
		*version = db_column_int64(st, 0);
		t = db_column_text(st, 1);
		*text = t ? strdup((const char *)t) : NULL;
		rc = *text ? KMS_OK : kms_errf(KMS_ERR_NOMEM, "policy text");
		if (rc == KMS_OK) {
			struct store_am_field f[] = {AM_INT(*version), AM_STR(*text)};
			char row[32];

			snprintf(row, sizeof(row), "version=%" PRId64, *version);
			if ((rc = am_check_locked(s, st, 2, STORE_AM_POLICY, f, 2, row)) != KMS_OK) {
				free(*text);
				*text = NULL;
			}
		}
	}
	stmt_release(st);
	store_unlock(s);
	return rc;
}

kms_err store_version_reserve(struct store *s, int64_t key_id, uint32_t version, uint64_t block, uint64_t limit,
			      uint64_t *upto)
{
	db_stmt *st;
	int src, changed;
	kms_err rc;

	if (block == 0 || block > INT64_MAX || limit > INT64_MAX)
		return kms_errf(KMS_ERR_INVALID, "bad reservation");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_VERSION_RESERVE];
	if (db_bind_int64(st, 1, key_id) != DB_OK || db_bind_int64(st, 2, version) != DB_OK ||
	    db_bind_int64(st, 3, (int64_t)block) != DB_OK ||
	    db_bind_int64(st, 4, (int64_t)limit) != DB_OK) {
		rc = db_fail(s, "reserve bind");
		stmt_release(st);
		goto out;
	}
	/* One statement, autocommit: durable (SQLite synchronous=FULL, PostgreSQL
	 * synchronous_commit=on) when it returns. The check and the increment are one
	 * row update, so two nodes reserving at once get distinct blocks. */
	src = db_step(st);
	changed = src == DB_ROW;
	if (changed) {
		*upto = (uint64_t)db_column_int64(st, 0);
		src = db_step(st); /* to the end: SQLite finishes the statement */
	}
	stmt_release(st);
	if (src != DB_DONE) {
		rc = db_fail(s, "reserve");
		goto out;
	}
	if (changed) {
		rc = KMS_OK;
		goto out;
	}
	/* no row updated: at the limit, or no such version */
	st = s->st[ST_VERSION_RESERVED];
	if (db_bind_int64(st, 1, key_id) != DB_OK || db_bind_int64(st, 2, version) != DB_OK) {
		rc = db_fail(s, "reserved bind");
		stmt_release(st);
		goto out;
	}
	src = db_step(st);
	if (src == DB_ROW) {
		*upto = (uint64_t)db_column_int64(st, 0);
		rc = changed == 1 ? KMS_OK : kms_errf(KMS_ERR_CONFLICT, "usage limit of this key version reached");
	} else if (src == DB_DONE) {
		rc = kms_errf(KMS_ERR_NOT_FOUND, "key version not found");
	} else {
		rc = db_fail(s, "reserved");
	}
	stmt_release(st);
out:
	store_unlock(s);
	return rc;
}

kms_err store_rotations_due(struct store *s, int64_t now, struct store_rotate_due **out, size_t *n)
{
	struct store_rotate_due *arr = NULL;
	size_t cap = 0, cnt = 0;
	db_stmt *st;
	int src;
	kms_err rc;

	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_ROTATIONS_DUE];
	if (db_bind_int64(st, 1, now) != DB_OK) {
		rc = db_fail(s, "rotations bind");
		goto out;
	}
	while ((src = db_step(st)) == DB_ROW) {
		void *g = grow(arr, &cap, cnt + 1, sizeof(*arr));
		if (g == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "rotations");
			goto out;
		}
		arr = g;
		memset(&arr[cnt], 0, sizeof(arr[cnt]));
		if ((rc = col_text(st, 0, arr[cnt].tenant, sizeof(arr[cnt].tenant), "tenants")) != KMS_OK ||
		    (rc = col_text(st, 1, arr[cnt].key, sizeof(arr[cnt].key), "keys")) != KMS_OK ||
		    (rc = col_u32(st, 2, &arr[cnt].latest, "keys")) != KMS_OK)
			goto out;
		cnt++;
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "rotations due");
		goto out;
	}
	*out = arr;
	*n = cnt;
	arr = NULL;
	rc = KMS_OK;
out:
	free(arr);
	stmt_release(st);
	store_unlock(s);
	return rc;
}

kms_err store_receipt_put(struct store *s, int64_t key_id, uint32_t version, const char *text, const uint8_t *sig,
			  size_t sig_len, int64_t now)
{
	struct store_receipt r = {text, sig, sig_len, now};
	kms_err rc;

	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	rc = receipt_insert_locked(s, key_id, version, &r);
	store_unlock(s);
	return rc;
}

kms_err store_receipt_get(struct store *s, int64_t key_id, uint32_t version, char **text, uint8_t **sig,
			  size_t *sig_len)
{
	db_stmt *st;
	int src, n;
	kms_err rc;

	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_RECEIPT_GET];
	if (db_bind_int64(st, 1, key_id) != DB_OK || db_bind_int64(st, 2, version) != DB_OK) {
		rc = db_fail(s, "receipt get bind");
		goto out;
	}
	src = db_step(st);
	if (src == DB_DONE) {
		rc = kms_errf(KMS_ERR_NOT_FOUND, "no erasure receipt for this key version");
	} else if (src != DB_ROW) {
		rc = db_fail(s, "receipt get");
	} else {
		const unsigned char *t = db_column_text(st, 0);
		const void *b = db_column_blob(st, 1);
		n = db_column_bytes(st, 1);
		*text = t ? strdup((const char *)t) : NULL;
		*sig = n > 0 ? malloc((size_t)n) : NULL;
		if (*text == NULL || *sig == NULL || b == NULL) {
			free(*text);
			free(*sig);
			*text = NULL;
			*sig = NULL;
			rc = kms_errf(KMS_ERR_NOMEM, "receipt");
		} else {
			memcpy(*sig, b, (size_t)n);
			*sig_len = (size_t)n;
			rc = KMS_OK;
		}
	}
out:
	stmt_release(st);
	store_unlock(s);
	return rc;
}

/* ---- master keys ---- */

static kms_err mk_event_locked(struct store *s, const struct store_mk_event *ev)
{
	db_stmt *st = s->st[ST_MK_EVENT_INSERT];

	if (ev == NULL)
		return kms_errf(KMS_ERR_INVALID, "master key event missing");
	if (db_bind_int64(st, 1, ev->time) != DB_OK ||
	    db_bind_int64(st, 2, ev->mk_version) != DB_OK ||
	    db_bind_text(st, 3, ev->event, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 4, ev->principal, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 5, ev->detail, -1, DB_STATIC) != DB_OK) {
		kms_err rc = db_fail(s, "master key event bind");

		stmt_release(st);
		return rc;
	}
	if (stmt_exec(st) != DB_DONE)
		return db_fail(s, "master key event insert");
	return KMS_OK;
}

static kms_err mk_rows_locked(struct store *s, uint32_t version, uint64_t *n)
{
	db_stmt *st = s->st[ST_MK_ROWS];
	kms_err rc = KMS_OK;

	if (db_bind_int64(st, 1, version) != DB_OK) {
		rc = db_fail(s, "master key rows bind");
	} else if (db_step(st) != DB_ROW) {
		rc = db_fail(s, "master key rows");
	} else {
		*n = (uint64_t)db_column_int64(st, 0);
	}
	stmt_release(st);
	return rc;
}

kms_err store_mk_active(struct store *s, uint32_t *out)
{
	kms_err rc;

	if (out == NULL)
		return kms_errf(KMS_ERR_INVALID, "no output for the master key version");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	rc = mk_live_locked(s, out, NULL);
	if (rc == KMS_OK && *out == 0)
		*out = 1;
	store_unlock(s);
	return rc;
}

kms_err store_mk_status(struct store *s, struct store_mk_status *out)
{
	db_stmt *st;
	uint32_t v = 0;
	int src;
	kms_err rc;

	if (out == NULL)
		return kms_errf(KMS_ERR_INVALID, "no output for the master key status");
	memset(out, 0, sizeof(*out));
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = mk_live_locked(s, &out->active, &out->retiring)) != KMS_OK)
		goto out;
	if (out->active == 0)
		out->active = 1;
	st = s->st[ST_MK_MAX];
	if (db_step(st) != DB_ROW) {
		rc = db_fail(s, "master key max");
		stmt_release(st);
		goto out;
	}
	rc = col_u32(st, 0, &out->highest, "master_keys");
	stmt_release(st);
	if (rc != KMS_OK)
		goto out;
	if (out->highest < out->active)
		out->highest = out->active;
	st = s->st[ST_MK_COUNTS];
	while ((src = db_step(st)) == DB_ROW) {
		int64_t cnt = db_column_int64(st, 2);
		if ((rc = col_u32(st, 0, &v, "key_versions")) != KMS_OK)
			break;
		if (db_column_int64(st, 1) != 0) {
			out->destroyed_rows += (uint64_t)cnt;
			continue;
		}
		if (out->n_counts == STORE_MK_COUNTS_MAX) {
			rc = db_corrupt("key_versions (too many master key versions)");
			break;
		}
		out->counts[out->n_counts].mk_version = v;
		out->counts[out->n_counts].rows = (uint64_t)cnt;
		out->n_counts++;
	}
	if (rc == KMS_OK && src != DB_DONE)
		rc = db_fail(s, "master key counts");
	stmt_release(st);
out:
	store_unlock(s);
	return rc;
}

kms_err store_mk_begin(struct store *s, uint32_t version, const struct store_mk_event *ev)
{
	db_stmt *st;
	uint32_t active, retiring, highest = 0;
	bool in_tx = false;
	kms_err rc;

	if (ev == NULL)
		return kms_errf(KMS_ERR_INVALID, "master key event missing");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = tx_begin(s)) != KMS_OK)
		goto out;
	in_tx = true;
	if ((rc = mk_live_locked(s, &active, &retiring)) != KMS_OK)
		goto out;
	if (retiring != 0) {
		rc = kms_errf(KMS_ERR_CONFLICT,
			      "a master-key rotation from version %" PRIu32 " to %" PRIu32 " is in progress",
			      retiring, active);
		goto out;
	}
	if (active == 0)
		active = 1;
	st = s->st[ST_MK_MAX];
	if (db_step(st) != DB_ROW) {
		rc = db_fail(s, "master key max");
		stmt_release(st);
		goto out;
	}
	rc = col_u32(st, 0, &highest, "master_keys");
	stmt_release(st);
	if (rc != KMS_OK)
		goto out;
	if (version <= active || version <= highest) {
		rc = kms_errf(KMS_ERR_CONFLICT,
			      "master key version %" PRIu32 " is not newer than every known one", version);
		goto out;
	}
	st = s->st[ST_MK_SET];
	if (db_bind_int64(st, 1, active) != DB_OK ||
	    db_bind_text(st, 2, STORE_MK_RETIRING, -1, DB_STATIC) != DB_OK ||
	    db_bind_int64(st, 3, ev->time) != DB_OK || stmt_exec(st) != DB_DONE) {
		rc = db_fail(s, "master key retire");
		stmt_release(st);
		goto out;
	}
	if (db_bind_int64(st, 1, version) != DB_OK ||
	    db_bind_text(st, 2, STORE_MK_ACTIVE, -1, DB_STATIC) != DB_OK ||
	    db_bind_int64(st, 3, ev->time) != DB_OK || stmt_exec(st) != DB_DONE) {
		rc = db_fail(s, "master key activate");
		stmt_release(st);
		goto out;
	}
	if ((rc = mk_event_locked(s, ev)) != KMS_OK || (rc = tx_commit(s)) != KMS_OK)
		goto out;
	in_tx = false;
out:
	if (in_tx)
		tx_rollback(s);
	store_unlock(s);
	return rc;
}

kms_err store_mk_pending(struct store *s, uint32_t to, int64_t after_key, uint32_t after_version,
			 size_t max, struct store_mk_row *out, size_t *n)
{
	db_stmt *st;
	int src;
	kms_err rc = KMS_OK;

	if (out == NULL || n == NULL || max == 0 || max > INT32_MAX)
		return kms_errf(KMS_ERR_INVALID, "bad master key row query");
	*n = 0;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_MK_PENDING];
	if (db_bind_int64(st, 1, to) != DB_OK || db_bind_int64(st, 2, after_key) != DB_OK ||
	    db_bind_int64(st, 3, after_version) != DB_OK ||
	    db_bind_int64(st, 4, (int64_t)max) != DB_OK) {
		rc = db_fail(s, "master key rows bind");
		goto out;
	}
	while ((src = db_step(st)) == DB_ROW) {
		struct store_mk_row *r = &out[*n];
		memset(r, 0, sizeof(*r));
		r->key_id = db_column_int64(st, 0);
		if ((rc = col_text(st, 1, r->tenant, sizeof(r->tenant), "tenants")) != KMS_OK ||
		    (rc = col_text(st, 2, r->key, sizeof(r->key), "keys")) != KMS_OK)
			goto out;
		/* row_version reads columns 0..7: step past the three in front */
		{
			struct store_version *v = &r->v;
			if ((rc = col_u32(st, 3, &v->version, "key_versions")) != KMS_OK ||
			    (rc = col_u32(st, 4, &v->mk_version, "key_versions")) != KMS_OK ||
			    (rc = col_blob(st, 5, v->blob, 1, STORE_BLOB_MAX, &v->blob_len, "key_versions")) != KMS_OK ||
			    (rc = col_blob(st, 6, v->mac, STORE_MAC_LEN, STORE_MAC_LEN, NULL, "key_versions")) != KMS_OK)
				goto out;
			v->created = db_column_int64(st, 7);
			if ((rc = col_text(st, 8, v->state, sizeof(v->state), "key_versions")) != KMS_OK)
				goto out;
			v->destroy_after = db_column_int64(st, 9);
			v->enc_reserved = (uint64_t)db_column_int64(st, 10);
		}
		(*n)++;
	}
	if (src != DB_DONE)
		rc = db_fail(s, "master key rows");
out:
	stmt_release(st);
	store_unlock(s);
	if (rc != KMS_OK)
		*n = 0;
	return rc;
}

kms_err store_mk_rewrap(struct store *s, const struct store_mk_row *rows, const struct store_version *nv,
			size_t n, const struct store_mk_event *ev, size_t *done)
{
	db_stmt *st;
	bool in_tx = false;
	size_t i, changed = 0;
	kms_err rc;

	if (done == NULL || (n > 0 && (rows == NULL || nv == NULL)) || ev == NULL)
		return kms_errf(KMS_ERR_INVALID, "bad master key rewrap");
	*done = 0;
	for (i = 0; i < n; i++)
		if ((rc = check_version_row(&nv[i])) != KMS_OK)
			return rc;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = tx_begin(s)) != KMS_OK)
		goto out;
	in_tx = true;
	st = s->st[ST_MK_REWRAP];
	for (i = 0; i < n; i++) {
		if (db_bind_int64(st, 1, rows[i].key_id) != DB_OK ||
		    db_bind_int64(st, 2, rows[i].v.version) != DB_OK ||
		    db_bind_blob(st, 3, nv[i].blob, (int)nv[i].blob_len, DB_STATIC) != DB_OK ||
		    db_bind_blob(st, 4, nv[i].mac, STORE_MAC_LEN, DB_STATIC) != DB_OK ||
		    db_bind_int64(st, 5, nv[i].mk_version) != DB_OK ||
		    db_bind_int64(st, 6, rows[i].v.mk_version) != DB_OK ||
		    db_bind_blob(st, 7, rows[i].v.blob, (int)rows[i].v.blob_len, DB_STATIC) != DB_OK) {
			rc = db_fail(s, "rewrap bind");
			stmt_release(st);
			goto out;
		}
		if (stmt_exec(st) != DB_DONE) {
			rc = db_fail(s, "rewrap");
			goto out;
		}
		changed += (size_t)db_changes(s->db);
	}
	if ((rc = mk_event_locked(s, ev)) != KMS_OK || (rc = tx_commit(s)) != KMS_OK)
		goto out;
	in_tx = false;
	*done = changed;
out:
	if (in_tx)
		tx_rollback(s);
	store_unlock(s);
	return rc;
}

kms_err store_mk_rows(struct store *s, uint32_t version, uint64_t *n)
{
	kms_err rc;

	if (n == NULL)
		return kms_errf(KMS_ERR_INVALID, "no output for the row count");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	rc = mk_rows_locked(s, version, n);
	store_unlock(s);
	return rc;
}

kms_err store_mk_finish(struct store *s, uint32_t version, const struct store_mk_event *ev)
{
	db_stmt *st;
	bool in_tx = false;
	uint64_t left = 0;
	kms_err rc;

	if (ev == NULL)
		return kms_errf(KMS_ERR_INVALID, "master key event missing");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = tx_begin(s)) != KMS_OK)
		goto out;
	in_tx = true;
	if ((rc = mk_rows_locked(s, version, &left)) != KMS_OK)
		goto out;
	if (left > 0) {
		rc = kms_errf(KMS_ERR_CONFLICT, "%" PRIu64 " key versions are still wrapped under master key version %" PRIu32,
			      left, version);
		goto out;
	}
	st = s->st[ST_MK_FINISH];
	if (db_bind_int64(st, 1, version) != DB_OK || db_bind_int64(st, 2, ev->time) != DB_OK) {
		rc = db_fail(s, "master key finish bind");
		stmt_release(st);
		goto out;
	}
	if (stmt_exec(st) != DB_DONE) {
		rc = db_fail(s, "master key finish");
		goto out;
	}
	if (db_changes(s->db) != 1) {
		rc = kms_errf(KMS_ERR_CONFLICT, "master key version %" PRIu32 " is not being retired", version);
		goto out;
	}
	if ((rc = mk_event_locked(s, ev)) != KMS_OK || (rc = tx_commit(s)) != KMS_OK)
		goto out;
	in_tx = false;
out:
	if (in_tx)
		tx_rollback(s);
	store_unlock(s);
	return rc;
}

kms_err store_mk_event_add(struct store *s, const struct store_mk_event *ev)
{
	kms_err rc;

	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	rc = mk_event_locked(s, ev);
	store_unlock(s);
	return rc;
}

kms_err store_mk_events_since(struct store *s, int64_t after_id, size_t max, struct store_mk_event **out, size_t *n)
{
	struct store_mk_event *arr = NULL;
	size_t cap = 0, cnt = 0;
	db_stmt *st;
	int src;
	kms_err rc;

	if (out == NULL || n == NULL || max == 0 || max > INT32_MAX)
		return kms_errf(KMS_ERR_INVALID, "bad master key event query");
	*out = NULL;
	*n = 0;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_MK_EVENT_LIST];
	if (db_bind_int64(st, 1, after_id) != DB_OK || db_bind_int64(st, 2, (int64_t)max) != DB_OK) {
		rc = db_fail(s, "master key events bind");
		goto out;
	}
	while ((src = db_step(st)) == DB_ROW) {
		struct store_mk_event *e;
		void *g = grow(arr, &cap, cnt + 1, sizeof(*arr));
		if (g == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "master key events");
			goto out;
		}
		arr = g;
		e = &arr[cnt];
		memset(e, 0, sizeof(*e));
		e->id = db_column_int64(st, 0);
		e->time = db_column_int64(st, 1);
		if ((rc = col_u32(st, 2, &e->mk_version, "master_key_events")) != KMS_OK ||
		    (rc = col_text(st, 3, e->event, sizeof(e->event), "master_key_events")) != KMS_OK ||
		    (rc = col_text(st, 4, e->principal, sizeof(e->principal), "master_key_events")) != KMS_OK ||
		    (rc = col_text(st, 5, e->detail, sizeof(e->detail), "master_key_events")) != KMS_OK)
			goto out;
		cnt++;
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "master key events");
		goto out;
	}
	*out = arr;
	*n = cnt;
	arr = NULL;
	rc = KMS_OK;
out:
	free(arr);
	stmt_release(st);
	store_unlock(s);
	return rc;
}

kms_err store_mk_pending_count(struct store *s, uint32_t to, uint64_t *n)
{
	db_stmt *st;
	kms_err rc;

	if (n == NULL)
		return kms_errf(KMS_ERR_INVALID, "no output for the row count");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_MK_PENDING_COUNT];
	if (db_bind_int64(st, 1, to) != DB_OK)
		rc = db_fail(s, "pending count bind");
	else if (db_step(st) != DB_ROW)
		rc = db_fail(s, "pending count");
	else
		*n = (uint64_t)db_column_int64(st, 0);
	stmt_release(st);
	store_unlock(s);
	return rc;
}

/* ---- quorum approvals and break-glass ----
 * Statements prepared per call: these are admin operations, rare next to the data
 * plane, and keeping them out of the shared statement table keeps this step whole. */

static kms_err prep(struct store *s, const char *sql, db_stmt **st)
{
	if (db_prepare(s->db, sql, false, st) != DB_OK) {
		*st = NULL;
		return db_fail(s, "prepare");
	}
	return KMS_OK;
}

static char *col_dup(db_stmt *st, int col)
{
	const unsigned char *t = db_column_text(st, col);

	return t ? strdup((const char *)t) : NULL;
}

void store_approval_clear(struct store_approval *a)
{
	if (a == NULL)
		return;
	free(a->request);
	free(a->result);
	a->request = a->result = NULL;
}

kms_err store_approval_create(struct store *s, const struct store_approval *a)
{
	db_stmt *st = NULL;
	int src;
	kms_err rc;

	if (a == NULL || strlen(a->id) != STORE_APPROVAL_ID_LEN || a->request == NULL || a->required < 1 ||
	    a->required > 16)
		return kms_errf(KMS_ERR_INVALID, "invalid approval request");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = prep(s, "INSERT INTO approval_requests (id, requester_id, requester, operation, tenant, key, "
			  "version, request, required, state, created, expires) "
			  "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'pending', ?10, ?11)",
		       &st)) != KMS_OK)
		goto out;
	if (db_bind_text(st, 1, a->id, -1, DB_STATIC) != DB_OK ||
	    db_bind_int64(st, 2, a->requester_id) != DB_OK ||
	    db_bind_text(st, 3, a->requester, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 4, a->operation, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 5, a->tenant, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 6, a->key, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 7, a->version, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 8, a->request, -1, DB_STATIC) != DB_OK ||
	    db_bind_int64(st, 9, a->required) != DB_OK || db_bind_int64(st, 10, a->created) != DB_OK ||
	    db_bind_int64(st, 11, a->expires) != DB_OK) {
		rc = db_fail(s, "approval bind");
		goto out;
	}
	src = db_step(st);
	if (is_unique_violation(db_errcode(s->db)) && src != DB_DONE)
		rc = kms_errf(KMS_ERR_CONFLICT, "approval request exists");
	else if (src != DB_DONE)
		rc = db_fail(s, "approval insert");
	else
		rc = KMS_OK;
out:
	(void)db_finalize(st);
	store_unlock(s);
	return rc;
}

#define APPROVAL_COLS \
	"id, requester_id, requester, operation, tenant, key, version, required, " \
	"CASE WHEN interrupted = 1 THEN 'interrupted' ELSE state END, created, expires, " \
	"finished, request, result"

static kms_err row_approval(db_stmt *st, struct store_approval *a, bool texts)
{
	kms_err rc;
	int64_t req;

	memset(a, 0, sizeof(*a));
	if ((rc = col_text(st, 0, a->id, sizeof(a->id), "approval_requests")) != KMS_OK ||
	    (rc = col_text(st, 2, a->requester, sizeof(a->requester), "approval_requests")) != KMS_OK ||
	    (rc = col_text(st, 3, a->operation, sizeof(a->operation), "approval_requests")) != KMS_OK ||
	    (rc = col_text(st, 4, a->tenant, sizeof(a->tenant), "approval_requests")) != KMS_OK ||
	    (rc = col_text(st, 5, a->key, sizeof(a->key), "approval_requests")) != KMS_OK ||
	    (rc = col_text(st, 6, a->version, sizeof(a->version), "approval_requests")) != KMS_OK ||
	    (rc = col_text(st, 8, a->state, sizeof(a->state), "approval_requests")) != KMS_OK)
		return rc;
	a->requester_id = db_column_int64(st, 1);
	req = db_column_int64(st, 7);
	if (req < 1 || req > 16)
		return db_corrupt("approval_requests");
	a->required = (unsigned)req;
	a->created = db_column_int64(st, 9);
	a->expires = db_column_int64(st, 10);
	a->finished = db_column_int64(st, 11);
	if (texts) {
		a->request = col_dup(st, 12);
		if (a->request == NULL)
			return kms_errf(KMS_ERR_NOMEM, "approval request");
		if (db_column_type(st, 13) != DB_NULL && (a->result = col_dup(st, 13)) == NULL) {
			store_approval_clear(a);
			return kms_errf(KMS_ERR_NOMEM, "approval result");
		}
	}
	return KMS_OK;
}

static kms_err votes_locked(struct store *s, const char *id, struct store_vote **out, size_t *n)
{
	db_stmt *st = NULL;
	struct store_vote *arr = NULL, *g;
	size_t cnt = 0, cap = 0;
	int src;
	kms_err rc;

	*out = NULL;
	*n = 0;
	if ((rc = prep(s, "SELECT request_id, principal_id, principal, verdict, time FROM approval_votes "
			  "WHERE request_id = ?1 ORDER BY time, principal",
		       &st)) != KMS_OK)
		return rc;
	if (db_bind_text(st, 1, id, -1, DB_STATIC) != DB_OK) {
		rc = db_fail(s, "votes bind");
		goto out;
	}
	while ((src = db_step(st)) == DB_ROW) {
		if ((g = grow(arr, &cap, cnt, sizeof(*arr))) == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "votes");
			goto out;
		}
		arr = g;
		memset(&arr[cnt], 0, sizeof(arr[cnt]));
		if ((rc = col_text(st, 0, arr[cnt].request_id, sizeof(arr[cnt].request_id), "approval_votes")) != KMS_OK ||
		    (rc = col_text(st, 2, arr[cnt].principal, sizeof(arr[cnt].principal), "approval_votes")) != KMS_OK ||
		    (rc = col_text(st, 3, arr[cnt].verdict, sizeof(arr[cnt].verdict), "approval_votes")) != KMS_OK)
			goto out;
		arr[cnt].principal_id = db_column_int64(st, 1);
		arr[cnt].time = db_column_int64(st, 4);
		cnt++;
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "votes");
		goto out;
	}
	*out = arr;
	*n = cnt;
	arr = NULL;
	rc = KMS_OK;
out:
	free(arr);
	(void)db_finalize(st);
	return rc;
}

kms_err store_approval_get(struct store *s, const char *id, struct store_approval *out, struct store_vote **votes,
			   size_t *n_votes)
{
	db_stmt *st = NULL;
	int src;
	kms_err rc;

	memset(out, 0, sizeof(*out));
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = prep(s, "SELECT " APPROVAL_COLS " FROM approval_requests WHERE id = ?1", &st)) != KMS_OK)
		goto out;
	if (db_bind_text(st, 1, id, -1, DB_STATIC) != DB_OK) {
		rc = db_fail(s, "approval get bind");
		goto out;
	}
	src = db_step(st);
	if (src == DB_DONE)
		rc = kms_errf(KMS_ERR_NOT_FOUND, "approval request not found");
	else if (src != DB_ROW)
		rc = db_fail(s, "approval get");
	else
		rc = row_approval(st, out, true);
	if (rc == KMS_OK && votes != NULL && (rc = votes_locked(s, id, votes, n_votes)) != KMS_OK)
		store_approval_clear(out);
out:
	(void)db_finalize(st);
	store_unlock(s);
	return rc;
}

kms_err store_approval_list(struct store *s, size_t max, struct store_approval **out, size_t *n)
{
	db_stmt *st = NULL;
	struct store_approval *arr = NULL, *g;
	size_t cnt = 0, cap = 0;
	int src;
	kms_err rc;

	*out = NULL;
	*n = 0;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = prep(s, "SELECT " APPROVAL_COLS " FROM approval_requests ORDER BY created DESC, id LIMIT ?1",
		       &st)) != KMS_OK)
		goto out;
	if (db_bind_int64(st, 1, (int64_t)max) != DB_OK) {
		rc = db_fail(s, "approval list bind");
		goto out;
	}
	while ((src = db_step(st)) == DB_ROW) {
		if ((g = grow(arr, &cap, cnt, sizeof(*arr))) == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "approval list");
			goto out;
		}
		arr = g;
		if ((rc = row_approval(st, &arr[cnt], false)) != KMS_OK)
			goto out;
		cnt++;
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "approval list");
		goto out;
	}
	*out = arr;
	*n = cnt;
	arr = NULL;
	rc = KMS_OK;
out:
	free(arr);
	(void)db_finalize(st);
	store_unlock(s);
	return rc;
}

/* One statement with text/int binds that changes rows; returns db_changes. */
static kms_err exec_changes(struct store *s, const char *sql, const char *t1, const char *t2, int64_t i3,
			    int *changes)
{
	db_stmt *st = NULL;
	kms_err rc;

	if ((rc = prep(s, sql, &st)) != KMS_OK)
		return rc;
	/* ?1, ?2 text, ?3 integer, each bound only when the statement has it */
	if ((t1 && db_bind_text(st, 1, t1, -1, DB_STATIC) != DB_OK) ||
	    (t2 && db_bind_text(st, 2, t2, -1, DB_STATIC) != DB_OK) ||
	    (db_bind_parameter_count(st) >= 3 && db_bind_int64(st, 3, i3) != DB_OK)) {
		rc = db_fail(s, "bind");
	} else if (db_step(st) != DB_DONE) {
		rc = db_fail(s, "update");
	} else {
		*changes = db_changes(s->db);
		rc = KMS_OK;
	}
	(void)db_finalize(st);
	return rc;
}

kms_err store_approval_vote(struct store *s, const char *id, int64_t principal_id, const char *principal,
			    const char *verdict, int64_t now, unsigned need, enum store_vote_result *res,
			    unsigned *approvals)
{
	db_stmt *st = NULL;
	struct store_approval a;
	bool approve = strcmp(verdict, "approve") == 0;
	int src, ch = 0;
	kms_err rc;

	*approvals = 0;
	if (!approve && strcmp(verdict, "deny") != 0)
		return kms_errf(KMS_ERR_INVALID, "verdict must be approve or deny");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = tx_begin(s)) != KMS_OK)
		goto unlock;
	if ((rc = prep(s, "SELECT " APPROVAL_COLS " FROM approval_requests WHERE id = ?1", &st)) != KMS_OK)
		goto fail;
	if (db_bind_text(st, 1, id, -1, DB_STATIC) != DB_OK) {
		rc = db_fail(s, "vote bind");
		goto fail;
	}
	src = db_step(st);
	if (src == DB_DONE) {
		rc = kms_errf(KMS_ERR_NOT_FOUND, "approval request not found");
		goto fail;
	}
	if (src != DB_ROW) {
		rc = db_fail(s, "vote read");
		goto fail;
	}
	if ((rc = row_approval(st, &a, false)) != KMS_OK)
		goto fail;
	(void)db_finalize(st);
	st = NULL;
	if (strcmp(a.state, "pending") != 0) {
		rc = kms_errf(KMS_ERR_CONFLICT, "approval request %s is %s", id, a.state);
		goto fail;
	}
	if (a.expires <= now) {
		if ((rc = exec_changes(s, "UPDATE approval_requests SET state = 'expired', finished = ?3 "
					  "WHERE id = ?1 AND state = 'pending'",
				       id, NULL, now, &ch)) != KMS_OK ||
		    (rc = tx_commit(s)) != KMS_OK)
			goto fail;
		*res = STORE_VOTE_EXPIRED;
		goto unlock;
	}
	if (approve && a.requester_id == principal_id) {
		rc = kms_errf(KMS_ERR_DENIED, "the requester may not approve its own request");
		goto fail;
	}
	if ((rc = prep(s, "INSERT INTO approval_votes (request_id, principal_id, principal, verdict, time) "
			  "VALUES (?1, ?2, ?3, ?4, ?5)",
		       &st)) != KMS_OK)
		goto fail;
	if (db_bind_text(st, 1, id, -1, DB_STATIC) != DB_OK ||
	    db_bind_int64(st, 2, principal_id) != DB_OK ||
	    db_bind_text(st, 3, principal, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 4, verdict, -1, DB_STATIC) != DB_OK ||
	    db_bind_int64(st, 5, now) != DB_OK) {
		rc = db_fail(s, "vote insert bind");
		goto fail;
	}
	src = db_step(st);
	if (src != DB_DONE) {
		if (is_unique_violation(db_errcode(s->db)))
			rc = kms_errf(KMS_ERR_CONFLICT, "%s has already voted on approval request %s", principal, id);
		else
			rc = db_fail(s, "vote insert");
		goto fail;
	}
	(void)db_finalize(st);
	st = NULL;
	if (!approve) {
		if ((rc = exec_changes(s, "UPDATE approval_requests SET state = 'denied', finished = ?3 "
					  "WHERE id = ?1 AND state = 'pending'",
				       id, NULL, now, &ch)) != KMS_OK)
			goto fail;
		*res = STORE_VOTE_DENIED;
	} else {
		int64_t cnt = 0;

		if ((rc = prep(s, "SELECT count(*) FROM approval_votes WHERE request_id = ?1 AND verdict = 'approve'",
			       &st)) != KMS_OK)
			goto fail;
		if (db_bind_text(st, 1, id, -1, DB_STATIC) != DB_OK || db_step(st) != DB_ROW) {
			rc = db_fail(s, "vote count");
			goto fail;
		}
		cnt = db_column_int64(st, 0);
		(void)db_finalize(st);
		st = NULL;
		*approvals = (unsigned)cnt;
		*res = STORE_VOTE_RECORDED;
		if (need < a.required)
			need = a.required;
		if ((uint64_t)cnt >= need) {
			/* the compare-and-set: only a request still pending moves; on PostgreSQL
			 * it names the run of kmsd that runs it (store_approvals_interrupt) */
			if ((rc = exec_changes(s,
					       PICK(s,
						    "UPDATE approval_requests SET state = 'executing' "
						    "WHERE id = ?1 AND state = 'pending'",
						    "UPDATE approval_requests SET state = 'executing', "
						    "executor = NULLIF(?2, '') WHERE id = ?1 AND state = 'pending'"),
					       id, db_backend(s->db) == DB_PG ? s->executor : NULL, 0, &ch)) != KMS_OK)
				goto fail;
			if (ch != 1) {
				rc = kms_errf(KMS_ERR_CONFLICT, "approval request %s is no longer pending", id);
				goto fail;
			}
			*res = STORE_VOTE_EXECUTE;
		}
	}
	if ((rc = tx_commit(s)) != KMS_OK)
		goto fail;
	goto unlock;
fail:
	(void)db_finalize(st);
	st = NULL;
	tx_rollback(s);
unlock:
	(void)db_finalize(st);
	store_unlock(s);
	return rc;
}

kms_err store_approval_finish(struct store *s, const char *id, const char *state, const char *result, int64_t now)
{
	db_stmt *st = NULL;
	kms_err rc;

	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	/* interrupted = 0: a live run whose request another node marked interrupted (it
	 * found the run's lease free for a moment) finished it after all, and the row says
	 * what happened */
	if ((rc = prep(s, "UPDATE approval_requests SET state = ?2, result = ?3, finished = ?4, interrupted = 0 "
			  "WHERE id = ?1 AND state = 'executing'",
		       &st)) != KMS_OK)
		goto out;
	if (db_bind_text(st, 1, id, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 2, state, -1, DB_STATIC) != DB_OK ||
	    (result ? db_bind_text(st, 3, result, -1, DB_STATIC) : db_bind_null(st, 3)) != DB_OK ||
	    db_bind_int64(st, 4, now) != DB_OK) {
		rc = db_fail(s, "approval finish bind");
		goto out;
	}
	if (db_step(st) != DB_DONE)
		rc = db_fail(s, "approval finish");
	else if (db_changes(s->db) != 1)
		rc = kms_errf(KMS_ERR_CONFLICT, "approval request %s is not executing", id);
out:
	(void)db_finalize(st);
	store_unlock(s);
	return rc;
}

kms_err store_approvals_expire(struct store *s, int64_t now, struct store_approval **out, size_t *n)
{
	db_stmt *st = NULL;
	struct store_approval *arr = NULL, *g;
	size_t cnt = 0, cap = 0;
	int src, ch;
	kms_err rc;

	*out = NULL;
	*n = 0;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = tx_begin(s)) != KMS_OK)
		goto unlock;
	if ((rc = prep(s, "SELECT " APPROVAL_COLS " FROM approval_requests WHERE state = 'pending' AND expires <= ?1",
		       &st)) != KMS_OK)
		goto fail;
	if (db_bind_int64(st, 1, now) != DB_OK) {
		rc = db_fail(s, "expire bind");
		goto fail;
	}
	while ((src = db_step(st)) == DB_ROW) {
		if ((g = grow(arr, &cap, cnt, sizeof(*arr))) == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "expire");
			goto fail;
		}
		arr = g;
		if ((rc = row_approval(st, &arr[cnt], false)) != KMS_OK)
			goto fail;
		cnt++;
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "expire select");
		goto fail;
	}
	(void)db_finalize(st);
	st = NULL;
	if (cnt > 0 && (rc = exec_changes(s, "UPDATE approval_requests SET state = 'expired', finished = ?3 "
					     "WHERE state = 'pending' AND expires <= ?3",
					  NULL, NULL, now, &ch)) != KMS_OK)
		goto fail;
	if ((rc = tx_commit(s)) != KMS_OK)
		goto fail;
	*out = arr;
	*n = cnt;
	arr = NULL;
	goto unlock;
fail:
	tx_rollback(s);
unlock:
	free(arr);
	(void)db_finalize(st);
	store_unlock(s);
	return rc;
}

kms_err store_approval_approvers(struct store *s, const char *operation, const char *tenant, const char *key,
				 const char *version, char ***names, size_t *n)
{
	db_stmt *st = NULL;
	char **arr = NULL, **g;
	size_t cnt = 0, cap = 0;
	int src;
	kms_err rc;

	*names = NULL;
	*n = 0;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = prep(s, "SELECT v.principal FROM approval_votes v WHERE v.verdict = 'approve' AND v.request_id = "
			  "(SELECT id FROM approval_requests WHERE operation = ?1 AND tenant = ?2 AND key = ?3 "
			  " AND version = ?4 AND state = 'approved-executed' ORDER BY finished DESC LIMIT 1) "
			  "ORDER BY v.time, v.principal",
		       &st)) != KMS_OK)
		goto out;
	if (db_bind_text(st, 1, operation, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 2, tenant, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 3, key, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 4, version, -1, DB_STATIC) != DB_OK) {
		rc = db_fail(s, "approvers bind");
		goto out;
	}
	while ((src = db_step(st)) == DB_ROW) {
		if ((g = grow(arr, &cap, cnt, sizeof(*arr))) == NULL || (g[cnt] = col_dup(st, 0)) == NULL) {
			if (g != NULL)
				arr = g;
			rc = kms_errf(KMS_ERR_NOMEM, "approvers");
			goto out;
		}
		arr = g;
		cnt++;
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "approvers");
		goto out;
	}
	*names = arr;
	*n = cnt;
	arr = NULL;
	cnt = 0;
	rc = KMS_OK;
out:
	for (size_t i = 0; i < cnt; i++)
		free(arr[i]);
	free(arr);
	(void)db_finalize(st);
	store_unlock(s);
	return rc;
}

kms_err store_grant_create(struct store *s, const struct store_grant *g)
{
	db_stmt *st = NULL;
	kms_err rc;

	if (g == NULL || strlen(g->id) != STORE_APPROVAL_ID_LEN || g->reason[0] == '\0' || g->expires <= g->granted)
		return kms_errf(KMS_ERR_INVALID, "invalid break-glass grant");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = prep(s, "INSERT INTO break_glass_grants (id, principal_id, principal, reason, tenant, key, granted, "
			  "expires) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
		       &st)) != KMS_OK)
		goto out;
	if (db_bind_text(st, 1, g->id, -1, DB_STATIC) != DB_OK ||
	    db_bind_int64(st, 2, g->principal_id) != DB_OK ||
	    db_bind_text(st, 3, g->principal, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 4, g->reason, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 5, g->tenant, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 6, g->key, -1, DB_STATIC) != DB_OK ||
	    db_bind_int64(st, 7, g->granted) != DB_OK || db_bind_int64(st, 8, g->expires) != DB_OK) {
		rc = db_fail(s, "grant bind");
		goto out;
	}
	if (db_step(st) != DB_DONE)
		rc = db_fail(s, "grant insert");
out:
	(void)db_finalize(st);
	store_unlock(s);
	return rc;
}

#define GRANT_COLS "id, principal_id, principal, reason, tenant, key, granted, expires"

static kms_err row_grant(db_stmt *st, struct store_grant *g)
{
	kms_err rc;

	memset(g, 0, sizeof(*g));
	if ((rc = col_text(st, 0, g->id, sizeof(g->id), "break_glass_grants")) != KMS_OK ||
	    (rc = col_text(st, 2, g->principal, sizeof(g->principal), "break_glass_grants")) != KMS_OK ||
	    (rc = col_text(st, 3, g->reason, sizeof(g->reason), "break_glass_grants")) != KMS_OK ||
	    (rc = col_text(st, 4, g->tenant, sizeof(g->tenant), "break_glass_grants")) != KMS_OK ||
	    (rc = col_text(st, 5, g->key, sizeof(g->key), "break_glass_grants")) != KMS_OK)
		return rc;
	g->principal_id = db_column_int64(st, 1);
	g->granted = db_column_int64(st, 6);
	g->expires = db_column_int64(st, 7);
	return KMS_OK;
}

kms_err store_grant_active(struct store *s, int64_t principal_id, const char *tenant, const char *key, int64_t now,
			   struct store_grant *out)
{
	db_stmt *st = NULL;
	int src;
	kms_err rc;

	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	/* GLOB: '*' and '?' as in policy globs; a grant's key pattern holds no '[' (checked
	 * when it is made), so it has no other meta-character */
	if ((rc = prep(s,
		       PICK(s,
			    "SELECT " GRANT_COLS " FROM break_glass_grants WHERE principal_id = ?1 AND tenant = ?2 "
			    "AND ?3 GLOB key AND granted <= ?4 AND expires > ?4 ORDER BY expires DESC LIMIT 1",
			    /* PostgreSQL has no GLOB: the pattern as a LIKE pattern, its LIKE
			     * meta-characters escaped first */
			    "SELECT " GRANT_COLS " FROM break_glass_grants WHERE principal_id = ?1 AND tenant = ?2 "
			    "AND ?3 LIKE replace(replace(replace(replace(replace(key, '\\', '\\\\'), '%', '\\%'), "
			    "'_', '\\_'), '*', '%'), '?', '_') "
			    "AND granted <= ?4 AND expires > ?4 ORDER BY expires DESC LIMIT 1"),
		       &st)) != KMS_OK)
		goto out;
	if (db_bind_int64(st, 1, principal_id) != DB_OK ||
	    db_bind_text(st, 2, tenant, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 3, key, -1, DB_STATIC) != DB_OK || db_bind_int64(st, 4, now) != DB_OK) {
		rc = db_fail(s, "grant active bind");
		goto out;
	}
	src = db_step(st);
	if (src == DB_DONE)
		rc = kms_errf(KMS_ERR_NOT_FOUND, "no break-glass grant");
	else if (src != DB_ROW)
		rc = db_fail(s, "grant active");
	else
		rc = row_grant(st, out);
out:
	(void)db_finalize(st);
	store_unlock(s);
	return rc;
}

kms_err store_grant_max_expiry(struct store *s, int64_t *out)
{
	db_stmt *st = NULL;
	kms_err rc;

	*out = 0;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = prep(s, "SELECT coalesce(max(expires), 0) FROM break_glass_grants", &st)) != KMS_OK)
		goto out;
	if (db_step(st) != DB_ROW)
		rc = db_fail(s, "grant max expiry");
	else
		*out = db_column_int64(st, 0);
out:
	(void)db_finalize(st);
	store_unlock(s);
	return rc;
}

kms_err store_grant_list(struct store *s, size_t max, struct store_grant **out, size_t *n)
{
	db_stmt *st = NULL;
	struct store_grant *arr = NULL, *g;
	size_t cnt = 0, cap = 0;
	int src;
	kms_err rc;

	*out = NULL;
	*n = 0;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = prep(s, "SELECT " GRANT_COLS " FROM break_glass_grants ORDER BY granted DESC, id LIMIT ?1", &st)) !=
	    KMS_OK)
		goto out;
	if (db_bind_int64(st, 1, (int64_t)max) != DB_OK) {
		rc = db_fail(s, "grant list bind");
		goto out;
	}
	while ((src = db_step(st)) == DB_ROW) {
		if ((g = grow(arr, &cap, cnt, sizeof(*arr))) == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "grant list");
			goto out;
		}
		arr = g;
		if ((rc = row_grant(st, &arr[cnt])) != KMS_OK)
			goto out;
		cnt++;
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "grant list");
		goto out;
	}
	*out = arr;
	*n = cnt;
	arr = NULL;
	rc = KMS_OK;
out:
	free(arr);
	(void)db_finalize(st);
	store_unlock(s);
	return rc;
}

kms_err store_review_list(struct store *s, const char *grant_id, struct store_review **out, size_t *n)
{
	db_stmt *st = NULL;
	struct store_review *arr = NULL, *g;
	size_t cnt = 0, cap = 0;
	int src;
	kms_err rc;

	*out = NULL;
	*n = 0;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = prep(s, "SELECT grant_id, principal_id, principal, verdict, note, time FROM break_glass_reviews "
			  "WHERE CAST(?1 AS TEXT) IS NULL OR grant_id = ?1 ORDER BY time, principal",
		       &st)) != KMS_OK)
		goto out;
	if ((grant_id ? db_bind_text(st, 1, grant_id, -1, DB_STATIC) : db_bind_null(st, 1)) != DB_OK) {
		rc = db_fail(s, "review list bind");
		goto out;
	}
	while ((src = db_step(st)) == DB_ROW) {
		if ((g = grow(arr, &cap, cnt, sizeof(*arr))) == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "review list");
			goto out;
		}
		arr = g;
		memset(&arr[cnt], 0, sizeof(arr[cnt]));
		if ((rc = col_text(st, 0, arr[cnt].grant_id, sizeof(arr[cnt].grant_id), "break_glass_reviews")) != KMS_OK ||
		    (rc = col_text(st, 2, arr[cnt].principal, sizeof(arr[cnt].principal), "break_glass_reviews")) != KMS_OK ||
		    (rc = col_text(st, 3, arr[cnt].verdict, sizeof(arr[cnt].verdict), "break_glass_reviews")) != KMS_OK ||
		    (rc = col_text(st, 4, arr[cnt].note, sizeof(arr[cnt].note), "break_glass_reviews")) != KMS_OK)
			goto out;
		arr[cnt].principal_id = db_column_int64(st, 1);
		arr[cnt].time = db_column_int64(st, 5);
		cnt++;
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "review list");
		goto out;
	}
	*out = arr;
	*n = cnt;
	arr = NULL;
	rc = KMS_OK;
out:
	free(arr);
	(void)db_finalize(st);
	store_unlock(s);
	return rc;
}

kms_err store_grant_review(struct store *s, const struct store_review *r)
{
	db_stmt *st = NULL;
	int src;
	kms_err rc;

	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = tx_begin(s)) != KMS_OK)
		goto unlock;
	if ((rc = prep(s, "SELECT principal_id FROM break_glass_grants WHERE id = ?1", &st)) != KMS_OK)
		goto fail;
	if (db_bind_text(st, 1, r->grant_id, -1, DB_STATIC) != DB_OK) {
		rc = db_fail(s, "review bind");
		goto fail;
	}
	src = db_step(st);
	if (src == DB_DONE) {
		rc = kms_errf(KMS_ERR_NOT_FOUND, "break-glass grant not found");
		goto fail;
	}
	if (src != DB_ROW) {
		rc = db_fail(s, "review grant");
		goto fail;
	}
	if (db_column_int64(st, 0) == r->principal_id) {
		rc = kms_errf(KMS_ERR_DENIED, "the grantee may not review its own break-glass grant");
		goto fail;
	}
	(void)db_finalize(st);
	st = NULL;
	if ((rc = prep(s, "INSERT INTO break_glass_reviews (grant_id, principal_id, principal, verdict, note, time) "
			  "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
		       &st)) != KMS_OK)
		goto fail;
	if (db_bind_text(st, 1, r->grant_id, -1, DB_STATIC) != DB_OK ||
	    db_bind_int64(st, 2, r->principal_id) != DB_OK ||
	    db_bind_text(st, 3, r->principal, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 4, r->verdict, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 5, r->note, -1, DB_STATIC) != DB_OK ||
	    db_bind_int64(st, 6, r->time) != DB_OK) {
		rc = db_fail(s, "review insert bind");
		goto fail;
	}
	if (db_step(st) != DB_DONE) {
		if (is_unique_violation(db_errcode(s->db)))
			rc = kms_errf(KMS_ERR_CONFLICT, "%s has already reviewed this grant", r->principal);
		else
			rc = db_fail(s, "review insert");
		goto fail;
	}
	(void)db_finalize(st);
	st = NULL;
	if ((rc = tx_commit(s)) != KMS_OK)
		goto fail;
	goto unlock;
fail:
	(void)db_finalize(st);
	st = NULL;
	tx_rollback(s);
unlock:
	store_unlock(s);
	return rc;
}

/* ---- metrics gauges and the compliance report (read-only aggregates) ---- */


kms_err store_version_gauges(struct store *s, uint64_t limit, struct store_tenant_states **out, size_t *n,
			     struct store_usage *u)
{
	static const char *const by_state =
		"SELECT t.name, v.state, count(*) FROM key_versions v JOIN keys k ON k.id = v.key_id"
		" JOIN tenants t ON t.id = k.tenant_id GROUP BY t.name, v.state ORDER BY t.name";
	static const char *const usage =
		"SELECT coalesce(max(enc_reserved), 0), coalesce(sum(CASE WHEN enc_reserved * 2 >= ?1 THEN 1 ELSE 0 END), 0),"
		" coalesce(sum(CASE WHEN enc_reserved * 10 >= ?1 * 9 THEN 1 ELSE 0 END), 0),"
		" min(CASE WHEN state = 'pending_destruction' THEN destroy_after END)"
		" FROM key_versions WHERE state != 'destroyed'";
	struct store_tenant_states *arr = NULL;
	db_stmt *st = NULL;
	size_t cap = 0, cnt = 0;
	int src;
	kms_err rc;

	if (out == NULL || n == NULL || u == NULL || limit == 0 || limit > INT64_MAX / 10)
		return kms_errf(KMS_ERR_INVALID, "bad gauge query");
	memset(u, 0, sizeof(*u));
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = prep(s, by_state, &st)) != KMS_OK)
		goto out;
	while ((src = db_step(st)) == DB_ROW) {
		const char *state = (const char *)db_column_text(st, 1);
		char tname[STORE_NAME_MAX + 1];
		int idx;

		if ((rc = col_text(st, 0, tname, sizeof(tname), "tenants")) != KMS_OK)
			goto out;
		if (state == NULL)
			idx = -1;
		else if (strcmp(state, STORE_STATE_ENABLED) == 0)
			idx = 0;
		else if (strcmp(state, STORE_STATE_DISABLED) == 0)
			idx = 1;
		else if (strcmp(state, STORE_STATE_PENDING) == 0)
			idx = 2;
		else if (strcmp(state, STORE_STATE_DESTROYED) == 0)
			idx = 3;
		else
			idx = -1;
		if (idx < 0) {
			rc = db_corrupt("key_versions");
			goto out;
		}
		if (cnt == 0 || strcmp(arr[cnt - 1].tenant, tname) != 0) {
			void *g = grow(arr, &cap, cnt, sizeof(*arr));

			if (g == NULL) {
				rc = kms_errf(KMS_ERR_NOMEM, "gauges");
				goto out;
			}
			arr = g;
			memset(&arr[cnt], 0, sizeof(arr[cnt]));
			memcpy(arr[cnt].tenant, tname, sizeof(tname));
			cnt++;
		}
		arr[cnt - 1].versions[idx] = (uint64_t)db_column_int64(st, 2);
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "version states");
		goto out;
	}
	db_finalize(st);
	if ((rc = prep(s, usage, &st)) != KMS_OK)
		goto out;
	if (db_bind_int64(st, 1, (int64_t)limit) != DB_OK) {
		rc = db_fail(s, "usage bind");
		goto out;
	}
	if (db_step(st) != DB_ROW) {
		rc = db_fail(s, "version usage");
		goto out;
	}
	u->max_reserved = (uint64_t)db_column_int64(st, 0);
	u->over_half = (uint64_t)db_column_int64(st, 1);
	u->over_90 = (uint64_t)db_column_int64(st, 2);
	u->next_destroy = db_column_type(st, 3) == DB_NULL ? 0 : db_column_int64(st, 3);
	*out = arr;
	*n = cnt;
	arr = NULL;
	rc = KMS_OK;
out:
	db_finalize(st);
	store_unlock(s);
	free(arr);
	return rc;
}

/* Runs sql (no parameters) and collects one elem-sized, zeroed entry a row, filled by
 * row(); *out malloc'd (free()). */
static kms_err query_rows(struct store *s, const char *sql, size_t elem, kms_err (*row)(db_stmt *, void *),
			  void **out, size_t *n)
{
	char *arr = NULL;
	db_stmt *st = NULL;
	size_t cap = 0, cnt = 0;
	int src;
	kms_err rc;

	if (out == NULL || n == NULL)
		return kms_errf(KMS_ERR_INVALID, "no output for the rows");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = prep(s, sql, &st)) != KMS_OK)
		goto out;
	while ((src = db_step(st)) == DB_ROW) {
		void *g = grow(arr, &cap, cnt, elem);

		if (g == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "out of memory");
			goto out;
		}
		arr = g;
		memset(arr + cnt * elem, 0, elem);
		if ((rc = row(st, arr + cnt * elem)) != KMS_OK)
			goto out;
		cnt++;
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "report rows");
		goto out;
	}
	*out = arr;
	*n = cnt;
	arr = NULL;
	rc = KMS_OK;
out:
	db_finalize(st);
	store_unlock(s);
	free(arr);
	return rc;
}

static kms_err row_crow(db_stmt *st, void *p)
{
	struct store_crow *r = p;
	kms_err rc;

	if ((rc = col_text(st, 0, r->tenant, sizeof(r->tenant), "tenants")) != KMS_OK ||
	    (rc = col_text(st, 1, r->retention, sizeof(r->retention), "tenants")) != KMS_OK)
		return rc;
	r->tenant_hold = db_column_int(st, 2);
	if (db_column_type(st, 3) != DB_NULL) {
		if ((rc = col_text(st, 3, r->key, sizeof(r->key), "keys")) != KMS_OK ||
		    (rc = col_u32(st, 5, &r->latest, "keys")) != KMS_OK)
			return rc;
		r->key_created = db_column_int64(st, 4);
		r->auto_rotate_period = db_column_int64(st, 6);
		r->revoked = db_column_int(st, 7);
		r->key_hold = db_column_int(st, 8);
	}
	if (db_column_type(st, 9) != DB_NULL) {
		if ((rc = col_u32(st, 9, &r->version, "key_versions")) != KMS_OK ||
		    (rc = col_text(st, 11, r->state, sizeof(r->state), "key_versions")) != KMS_OK)
			return rc;
		r->created = db_column_int64(st, 10);
		r->destroy_after = db_column_int64(st, 12);
		r->enc_reserved = (uint64_t)db_column_int64(st, 13);
	}
	return KMS_OK;
}

kms_err store_compliance_rows(struct store *s, struct store_crow **out, size_t *n)
{
	static const char *const sql =
		"SELECT t.name, t.retention, t.legal_hold, k.name, k.created, k.latest_version,"
		" k.auto_rotate_period, k.revoked, k.legal_hold, v.version, v.created, v.state,"
		" v.destroy_after, v.enc_reserved"
		" FROM tenants t LEFT JOIN keys k ON k.tenant_id = t.id"
		" LEFT JOIN key_versions v ON v.key_id = k.id ORDER BY t.name, k.name, v.version";
	void *rows = NULL;
	kms_err rc;

	if (out == NULL)
		return kms_errf(KMS_ERR_INVALID, "no output for the rows");
	rc = query_rows(s, sql, sizeof(**out), row_crow, &rows, n);
	if (rc == KMS_OK)
		*out = rows;
	return rc;
}

static kms_err row_token_owner(db_stmt *st, void *p)
{
	struct store_token_owner *t = p;
	kms_err rc;

	if ((rc = col_text(st, 0, t->accessor, sizeof(t->accessor), "api_tokens")) != KMS_OK ||
	    (rc = col_text(st, 1, t->principal, sizeof(t->principal), "principals")) != KMS_OK ||
	    (rc = col_text(st, 2, t->role, sizeof(t->role), "principals")) != KMS_OK)
		return rc;
	t->created = db_column_int64(st, 3);
	t->last_used = db_column_int64(st, 4);
	return KMS_OK;
}

kms_err store_tokens_without_expiry(struct store *s, struct store_token_owner **out, size_t *n)
{
	static const char *const sql =
		"SELECT a.accessor, p.name, p.role, a.created, a.last_used FROM api_tokens a"
		" JOIN principals p ON p.id = a.principal_id WHERE a.expires = 0 AND a.revoked = 0"
		" ORDER BY p.name, a.created, a.accessor";
	void *rows = NULL;
	kms_err rc;

	if (out == NULL)
		return kms_errf(KMS_ERR_INVALID, "no output for the rows");
	rc = query_rows(s, sql, sizeof(**out), row_token_owner, &rows, n);
	if (rc == KMS_OK)
		*out = rows;
	return rc;
}

/* ---- online snapshot (backup) ------------------------------------------------------ */

kms_err store_snapshot(struct store *s, uint8_t **out, size_t *len)
{
	sqlite3 *mem = NULL;
	sqlite3_backup *b;
	unsigned char *ser = NULL;
	sqlite3_int64 n = 0;
	kms_err rc = KMS_OK;
	int src;

	*out = NULL;
	*len = 0;
	if (db_backend(s->db) != DB_SQLITE)
		return kms_errf(KMS_ERR_UNSUPPORTED, "the PostgreSQL store is backed up with pg_dump/PITR, see "
						     "docs/SCALE-OUT.md");
	if (sqlite3_open_v2(":memory:", &mem, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != DB_OK) {
		sqlite3_close(mem);
		return kms_errf(KMS_ERR_NOMEM, "store snapshot: cannot open an in-memory database");
	}
	pthread_mutex_lock(&s->mu);
	/* One step copies every page inside one read transaction of the serving connection:
	 * the copy is the store as of one commit, whatever the other threads wait to write. */
	b = sqlite3_backup_init(mem, "main", db_sqlite_handle(s->db), "main");
	if (b == NULL) {
		kms_error("store: snapshot: %s", sqlite3_errmsg(mem));
		rc = kms_errf(KMS_ERR_STORE, "metadata store error");
	} else {
		src = sqlite3_backup_step(b, -1);
		if (sqlite3_backup_finish(b) != DB_OK || src != DB_DONE) {
			kms_error("store: snapshot: sqlite %d: %s", src, sqlite3_errmsg(mem));
			rc = kms_errf(KMS_ERR_STORE, "metadata store error");
		}
	}
	pthread_mutex_unlock(&s->mu);
	if (rc == KMS_OK) {
		ser = sqlite3_serialize(mem, "main", &n, 0);
		if (ser == NULL || n <= 0)
			rc = kms_errf(KMS_ERR_NOMEM, "store snapshot: cannot serialize the copy");
	}
	if (rc == KMS_OK) {
		*out = malloc((size_t)n);
		if (*out == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "store snapshot: out of memory");
		} else {
			memcpy(*out, ser, (size_t)n);
			*len = (size_t)n;
		}
	}
	if (ser != NULL) {
		kms_wipe(ser, (size_t)n);
		sqlite3_free(ser);
	}
	sqlite3_close(mem);
	return rc;
}

/* ---- client certificates mapped to principals ---- */

enum store_cert_kind store_cert_kind_parse(const char *s)
{
	if (s != NULL && strcmp(s, "spki") == 0)
		return STORE_CERT_SPKI;
	if (s != NULL && strcmp(s, "subject") == 0)
		return STORE_CERT_SUBJECT;
	return 0;
}

const char *store_cert_kind_name(enum store_cert_kind k)
{
	return k == STORE_CERT_SPKI ? "spki" : k == STORE_CERT_SUBJECT ? "subject" : "unknown";
}

static kms_err cert_args(enum store_cert_kind kind, const char *value)
{
	size_t n;

	if (kind != STORE_CERT_SPKI && kind != STORE_CERT_SUBJECT)
		return kms_errf(KMS_ERR_INVALID, "certificate mapping kind must be spki or subject");
	n = value != NULL ? strnlen(value, STORE_CERT_VALUE_MAX + 1) : 0;
	if (n == 0 || n > STORE_CERT_VALUE_MAX)
		return kms_errf(KMS_ERR_INVALID, "certificate mapping value must be 1..%d bytes", STORE_CERT_VALUE_MAX);
	return KMS_OK;
}

/* The new mapping's MAC; its id is known only after the insert. */
static kms_err am_cert_seal_locked(struct store *s, int64_t id, int64_t principal_id, enum store_cert_kind kind,
				   const char *value)
{
	struct store_am_field f[] = {AM_INT(id), AM_INT(principal_id), AM_STR(store_cert_kind_name(kind)),
				     AM_STR(value)};
	db_stmt *st = NULL;
	kms_err rc;

	if (s->am_mac == NULL)
		return KMS_OK;
	if (db_prepare(s->db, "UPDATE principal_certs SET mac = ?1 WHERE id = ?2", false, &st) != DB_OK) {
		rc = db_fail(s, "certificate mapping mac prepare");
		goto out;
	}
	if ((rc = am_bind_locked(s, st, 1, STORE_AM_CERT, f, 4)) != KMS_OK)
		goto out;
	if (db_bind_int64(st, 2, id) != DB_OK || db_step(st) != DB_DONE)
		rc = db_fail(s, "certificate mapping mac");
out:
	db_finalize(st);
	return rc;
}

kms_err store_cert_add(struct store *s, int64_t principal_id, enum store_cert_kind kind, const char *value,
		       int64_t now, int64_t *id_out)
{
	db_stmt *st;
	int64_t id = 0;
	int src;
	kms_err rc;

	if ((rc = cert_args(kind, value)) != KMS_OK)
		return rc;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_CERT_INSERT];
	if (db_bind_int64(st, 1, principal_id) != DB_OK ||
	    db_bind_text(st, 2, store_cert_kind_name(kind), -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 3, value, -1, DB_STATIC) != DB_OK || db_bind_int64(st, 4, now) != DB_OK) {
		rc = db_fail(s, "certificate mapping bind");
		stmt_release(st);
		goto out;
	}
	if ((rc = tx_begin(s)) != KMS_OK) {
		stmt_release(st);
		goto out;
	}
	src = stmt_insert_id(st, &id);
	if (is_unique_violation(src))
		rc = kms_errf(KMS_ERR_CONFLICT, "this certificate %s is already mapped to a principal",
			      store_cert_kind_name(kind));
	else if (src == DB_CONSTRAINT_FOREIGNKEY)
		rc = kms_errf(KMS_ERR_NOT_FOUND, "principal %" PRId64 " not found", principal_id);
	else if (src != DB_DONE)
		rc = db_fail(s, "certificate mapping insert");
	else {
		rc = am_cert_seal_locked(s, id, principal_id, kind, value);
		if (rc == KMS_OK)
			rc = tx_commit(s);
		if (rc == KMS_OK && id_out != NULL)
			*id_out = id;
	}
	if (rc != KMS_OK)
		tx_rollback(s);
out:
	store_unlock(s);
	return rc;
}

kms_err store_cert_list(struct store *s, int64_t principal_id, struct store_cert **out, size_t *n)
{
	struct store_cert *arr = NULL;
	size_t cap = 0, cnt = 0;
	db_stmt *st;
	char kind[16];
	int src;
	kms_err rc;

	if (out == NULL || n == NULL)
		return kms_errf(KMS_ERR_INVALID, "no output for certificate mappings");
	*out = NULL;
	*n = 0;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_CERT_LIST];
	if (db_bind_int64(st, 1, principal_id) != DB_OK) {
		rc = db_fail(s, "certificate mappings bind");
		goto out;
	}
	while ((src = db_step(st)) == DB_ROW) {
		struct store_cert *e;
		void *g = grow(arr, &cap, cnt + 1, sizeof(*arr));
		if (g == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "certificate mappings");
			goto out;
		}
		arr = g;
		e = &arr[cnt];
		memset(e, 0, sizeof(*e));
		e->id = db_column_int64(st, 0);
		if ((rc = col_text(st, 1, kind, sizeof(kind), "principal_certs")) != KMS_OK ||
		    (rc = col_text(st, 2, e->value, sizeof(e->value), "principal_certs")) != KMS_OK)
			goto out;
		if ((e->kind = store_cert_kind_parse(kind)) == 0) {
			rc = db_corrupt("principal_certs");
			goto out;
		}
		e->created = db_column_int64(st, 3);
		cnt++;
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "certificate mappings");
		goto out;
	}
	*out = arr;
	*n = cnt;
	arr = NULL;
	rc = KMS_OK;
out:
	free(arr);
	stmt_release(st);
	store_unlock(s);
	return rc;
}

kms_err store_cert_delete(struct store *s, int64_t principal_id, enum store_cert_kind kind, const char *value)
{
	db_stmt *st;
	kms_err rc;

	if ((rc = cert_args(kind, value)) != KMS_OK)
		return rc;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_CERT_DELETE];
	if (db_bind_int64(st, 1, principal_id) != DB_OK ||
	    db_bind_text(st, 2, store_cert_kind_name(kind), -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 3, value, -1, DB_STATIC) != DB_OK) {
		rc = db_fail(s, "certificate mapping delete bind");
		stmt_release(st);
		goto out;
	}
	if (stmt_exec(st) != DB_DONE)
		rc = db_fail(s, "certificate mapping delete");
	else if (db_changes(s->db) == 0)
		rc = kms_errf(KMS_ERR_NOT_FOUND, "no such certificate mapping for this principal");
out:
	store_unlock(s);
	return rc;
}

kms_err store_cert_lookup(struct store *s, enum store_cert_kind kind, const char *value, int64_t *principal_id)
{
	db_stmt *st;
	int src;
	kms_err rc;

	if (principal_id == NULL)
		return kms_errf(KMS_ERR_INVALID, "no output for certificate lookup");
	if ((rc = cert_args(kind, value)) != KMS_OK)
		return rc;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	st = s->st[ST_CERT_LOOKUP];
	if (db_bind_text(st, 1, store_cert_kind_name(kind), -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 2, value, -1, DB_STATIC) != DB_OK) {
		rc = db_fail(s, "certificate lookup bind");
		goto out;
	}
	src = db_step(st);
	if (src == DB_ROW) {
		int64_t pid = db_column_int64(st, 0), id = db_column_int64(st, 1);
		struct store_am_field f[] = {AM_INT(id), AM_INT(pid), AM_STR(store_cert_kind_name(kind)), AM_STR(value)};
		char row[32];

		snprintf(row, sizeof(row), "id=%" PRId64, id);
		if ((rc = am_check_locked(s, st, 2, STORE_AM_CERT, f, 4, row)) == KMS_OK)
			*principal_id = pid;
	} else if (src == DB_DONE)
		rc = kms_errf(KMS_ERR_NOT_FOUND, "certificate not mapped");
	else
		rc = db_fail(s, "certificate lookup");
out:
	stmt_release(st);
	store_unlock(s);
	return rc;
}

/* ---- MFA state (principal_mfa). Rare calls: statements are prepared per call rather
 * than kept in the persistent set. ---- */

static kms_err mfa_prepare(struct store *s, const char *sql, db_stmt **st)
{
	if (db_prepare(s->db, sql, false, st) != DB_OK) {
		*st = NULL;
		return db_fail(s, "mfa prepare");
	}
	return KMS_OK;
}

/* The MAC'd fields of an MFA row (authmac.h, STORE_AM_MFA); f has room for 7. */
static void mfa_am_fields(const struct store_mfa *m, struct store_am_field *f)
{
	f[0] = (struct store_am_field)AM_INT(m->principal_id);
	f[1] = (struct store_am_field)AM_STR(m->state);
	f[2] = (struct store_am_field)AM_BYTES(m->sealed_seed, m->sealed_len);
	f[3] = (struct store_am_field)AM_STR(m->recovery);
	f[4] = (struct store_am_field)AM_INT(m->pending_len > 0);
	f[5] = (struct store_am_field)AM_BYTES(m->pending_seed, m->pending_len);
	f[6] = (struct store_am_field)AM_STR(m->pending_len > 0 ? m->pending_recovery : "");
}

#define MFA_AM_SELECT                                                                                  \
	"SELECT state, sealed_seed, recovery, pending_seed, coalesce(pending_recovery, ''), mac "     \
	"FROM principal_mfa WHERE principal_id = ?1"

/* Reads the MAC'd columns of principal_id's MFA row into m; *found false when none. */
static kms_err mfa_am_read_locked(struct store *s, int64_t principal_id, struct store_mfa *m, db_stmt **stp,
				  bool *found)
{
	db_stmt *st = NULL;
	const void *b;
	int src, n;
	kms_err rc;

	*found = false;
	*stp = NULL;
	memset(m, 0, sizeof(*m));
	m->principal_id = principal_id;
	if ((rc = mfa_prepare(s, MFA_AM_SELECT, &st)) != KMS_OK)
		return rc;
	if (db_bind_int64(st, 1, principal_id) != DB_OK) {
		db_finalize(st);
		return db_fail(s, "mfa mac bind");
	}
	src = db_step(st);
	if (src == DB_DONE) {
		db_finalize(st);
		return KMS_OK;
	}
	if (src != DB_ROW) {
		db_finalize(st);
		return db_fail(s, "mfa mac read");
	}
	if ((rc = col_text(st, 0, m->state, sizeof(m->state), "principal_mfa")) != KMS_OK ||
	    (rc = col_blob(st, 1, m->sealed_seed, 1, sizeof(m->sealed_seed), &m->sealed_len, "principal_mfa")) !=
		    KMS_OK ||
	    (rc = col_text(st, 2, m->recovery, sizeof(m->recovery), "principal_mfa")) != KMS_OK ||
	    (rc = col_text(st, 4, m->pending_recovery, sizeof(m->pending_recovery), "principal_mfa")) != KMS_OK) {
		db_finalize(st);
		return rc;
	}
	if ((b = db_column_blob(st, 3)) != NULL) {
		n = db_column_bytes(st, 3);
		if (n <= 0 || (size_t)n > sizeof(m->pending_seed)) {
			db_finalize(st);
			return db_corrupt("principal_mfa");
		}
		memcpy(m->pending_seed, b, (size_t)n);
		m->pending_len = (size_t)n;
	}
	*found = true;
	*stp = st;
	return KMS_OK;
}

/* Checks principal_id's MFA row (if any) before a change, inside the caller's
 * transaction, so that a row edited outside kmsd is refused rather than given a fresh
 * MAC by the change. */
static kms_err mfa_am_verify_locked(struct store *s, int64_t principal_id)
{
	struct store_mfa *m;
	struct store_am_field f[7];
	db_stmt *st = NULL;
	char row[40];
	bool found;
	kms_err rc;

	if (s->am_mac == NULL)
		return KMS_OK;
	if ((m = kms_secret_alloc(sizeof(*m))) == NULL)
		return kms_errf(KMS_ERR_NOMEM, "mfa");
	rc = mfa_am_read_locked(s, principal_id, m, &st, &found);
	if (rc == KMS_OK && found) {
		mfa_am_fields(m, f);
		snprintf(row, sizeof(row), "principal_id=%" PRId64, principal_id);
		rc = am_check_locked(s, st, 5, STORE_AM_MFA, f, 7, row);
	}
	db_finalize(st);
	kms_secret_free(m);
	return rc;
}

/* Writes the MAC of principal_id's MFA row as it is now (after a change). */
static kms_err mfa_am_seal_locked(struct store *s, int64_t principal_id)
{
	struct store_mfa *m;
	struct store_am_field f[7];
	db_stmt *st = NULL, *up = NULL;
	bool found;
	kms_err rc;

	if (s->am_mac == NULL)
		return KMS_OK;
	if ((m = kms_secret_alloc(sizeof(*m))) == NULL)
		return kms_errf(KMS_ERR_NOMEM, "mfa");
	rc = mfa_am_read_locked(s, principal_id, m, &st, &found);
	db_finalize(st);
	if (rc == KMS_OK && found) {
		mfa_am_fields(m, f);
		rc = mfa_prepare(s, "UPDATE principal_mfa SET mac = ?1 WHERE principal_id = ?2", &up);
		if (rc == KMS_OK)
			rc = am_bind_locked(s, up, 1, STORE_AM_MFA, f, 7);
		if (rc == KMS_OK && (db_bind_int64(up, 2, principal_id) != DB_OK || db_step(up) != DB_DONE))
			rc = db_fail(s, "mfa mac");
		db_finalize(up);
	}
	kms_secret_free(m);
	return rc;
}

kms_err store_mfa_get(struct store *s, int64_t principal_id, struct store_mfa *out)
{
	db_stmt *st = NULL;
	int src;
	kms_err rc;

	if (out == NULL)
		return kms_errf(KMS_ERR_INVALID, "no output for the MFA state");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	rc = mfa_prepare(s, "SELECT state, sealed_seed, last_step, failures, locked, recovery, mfa_at, created, "
			    "pending_seed, pending_recovery, mac FROM principal_mfa WHERE principal_id = ?1", &st);
	if (rc != KMS_OK)
		goto out;
	if (db_bind_int64(st, 1, principal_id) != DB_OK) {
		rc = db_fail(s, "mfa get bind");
		goto out;
	}
	src = db_step(st);
	if (src == DB_DONE) {
		rc = kms_errf(KMS_ERR_NOT_FOUND, "no MFA enrolment");
		goto out;
	}
	if (src != DB_ROW) {
		rc = db_fail(s, "mfa get");
		goto out;
	}
	memset(out, 0, sizeof(*out));
	out->principal_id = principal_id;
	if ((rc = col_text(st, 0, out->state, sizeof(out->state), "principal_mfa")) != KMS_OK)
		goto out;
	{
		int n = db_column_bytes(st, 1);
		const void *b = db_column_blob(st, 1);
		if (n <= 0 || (size_t)n > sizeof(out->sealed_seed) || b == NULL) {
			rc = db_corrupt("principal_mfa");
			goto out;
		}
		memcpy(out->sealed_seed, b, (size_t)n);
		out->sealed_len = (size_t)n;
	}
	if (db_column_int64(st, 2) < 0 || db_column_int64(st, 3) < 0) {
		rc = db_corrupt("principal_mfa");
		goto out;
	}
	out->last_step = (uint64_t)db_column_int64(st, 2);
	out->failures = (uint32_t)db_column_int64(st, 3);
	out->locked = db_column_int(st, 4) != 0;
	if ((rc = col_text(st, 5, out->recovery, sizeof(out->recovery), "principal_mfa")) != KMS_OK)
		goto out;
	out->mfa_at = db_column_int64(st, 6);
	out->created = db_column_int64(st, 7);
	if (db_column_type(st, 8) != DB_NULL) {
		int n = db_column_bytes(st, 8);
		const void *b = db_column_blob(st, 8);
		if (n <= 0 || (size_t)n > sizeof(out->pending_seed) || b == NULL ||
		    db_column_type(st, 9) == DB_NULL) {
			rc = db_corrupt("principal_mfa");
			goto out;
		}
		memcpy(out->pending_seed, b, (size_t)n);
		out->pending_len = (size_t)n;
		if ((rc = col_text(st, 9, out->pending_recovery, sizeof(out->pending_recovery), "principal_mfa")) !=
		    KMS_OK)
			goto out;
	}
	{
		struct store_am_field f[7];
		char row[40];

		mfa_am_fields(out, f);
		snprintf(row, sizeof(row), "principal_id=%" PRId64, principal_id);
		rc = am_check_locked(s, st, 10, STORE_AM_MFA, f, 7, row);
	}
out:
	if (rc != KMS_OK && out != NULL)
		kms_wipe(out, sizeof(*out));
	db_finalize(st);
	store_unlock(s);
	return rc;
}

kms_err store_mfa_put(struct store *s, const struct store_mfa *m, int64_t now)
{
	db_stmt *st = NULL;
	kms_err rc;

	if (m == NULL || m->sealed_len == 0 || m->sealed_len > sizeof(m->sealed_seed) ||
	    (strcmp(m->state, "pending") != 0 && strcmp(m->state, "active") != 0) ||
	    strlen(m->recovery) >= sizeof(m->recovery) || m->last_step > INT64_MAX)
		return kms_errf(KMS_ERR_INVALID, "bad MFA enrolment row");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	/* One transaction with the row's new MAC. The old row is not checked: a new
	 * enrolment replaces whatever was there (the policy decided who may enrol). */
	if ((rc = tx_begin(s)) != KMS_OK) {
		store_unlock(s);
		return rc;
	}
	/* A new enrolment replaces the old one but keeps its last accepted step, so that a
	 * step is never accepted twice for one principal, whatever the seed. */
#define MFA_PUT_TAIL                                                                         \
	"  failures = 0, locked = 0, recovery = excluded.recovery, mfa_at = excluded.mfa_at, "     \
	"  created = excluded.created, updated = excluded.updated, pending_seed = NULL, "        \
	"  pending_recovery = NULL"
	rc = mfa_prepare(s,
			 PICK(s,
			      "INSERT INTO principal_mfa (principal_id, state, sealed_seed, last_step, failures, locked, "
			      "  recovery, mfa_at, created, updated) VALUES (?1, ?2, ?3, ?4, 0, 0, ?5, ?6, ?7, ?7) "
			      "ON CONFLICT (principal_id) DO UPDATE SET state = excluded.state, "
			      "  sealed_seed = excluded.sealed_seed, last_step = max(last_step, excluded.last_step), " MFA_PUT_TAIL,
			      "INSERT INTO principal_mfa (principal_id, state, sealed_seed, last_step, failures, locked, "
			      "  recovery, mfa_at, created, updated) VALUES (?1, ?2, ?3, ?4, 0, 0, ?5, ?6, ?7, ?7) "
			      "ON CONFLICT (principal_id) DO UPDATE SET state = excluded.state, "
			      "  sealed_seed = excluded.sealed_seed, "
			      "  last_step = GREATEST(principal_mfa.last_step, excluded.last_step), " MFA_PUT_TAIL),
			 &st);
	if (rc != KMS_OK)
		goto out;
	if (db_bind_int64(st, 1, m->principal_id) != DB_OK ||
	    db_bind_text(st, 2, m->state, -1, DB_STATIC) != DB_OK ||
	    db_bind_blob(st, 3, m->sealed_seed, (int)m->sealed_len, DB_STATIC) != DB_OK ||
	    db_bind_int64(st, 4, (int64_t)m->last_step) != DB_OK ||
	    db_bind_text(st, 5, m->recovery, -1, DB_STATIC) != DB_OK ||
	    db_bind_int64(st, 6, m->mfa_at) != DB_OK || db_bind_int64(st, 7, now) != DB_OK) {
		rc = db_fail(s, "mfa put bind");
		goto out;
	}
	if (db_step(st) != DB_DONE) {
		rc = db_errcode(s->db) == DB_CONSTRAINT_FOREIGNKEY
			     ? kms_errf(KMS_ERR_NOT_FOUND, "principal not found")
			     : db_fail(s, "mfa put");
		goto out;
	}
	if ((rc = mfa_am_seal_locked(s, m->principal_id)) == KMS_OK)
		rc = tx_commit(s);
out:
	db_finalize(st);
	if (rc != KMS_OK)
		tx_rollback(s);
	store_unlock(s);
	return rc;
}

/* Runs an UPDATE/DELETE with int64 and text parameters (text where `texts` has a
 * non-NULL entry) and reports how many rows it changed. */
static kms_err mfa_change(struct store *s, const char *sql, const int64_t *ints, const char *const *texts,
			  int n, int *changed)
{
	db_stmt *st = NULL;
	kms_err rc;

	if ((rc = mfa_prepare(s, sql, &st)) != KMS_OK)
		return rc;
	for (int i = 0; i < n; i++) {
		int brc = texts != NULL && texts[i] != NULL ? db_bind_text(st, i + 1, texts[i], -1, DB_STATIC)
							     : db_bind_int64(st, i + 1, ints[i]);
		if (brc != DB_OK) {
			rc = db_fail(s, "mfa bind");
			goto out;
		}
	}
	if (db_step(st) != DB_DONE) {
		rc = db_fail(s, "mfa update");
		goto out;
	}
	*changed = db_changes(s->db);
	rc = KMS_OK;
out:
	db_finalize(st);
	return rc;
}

kms_err store_mfa_accept_step(struct store *s, int64_t principal_id, uint64_t step, bool activate, int64_t now)
{
	int64_t v[4] = {(int64_t)step, now, activate ? 1 : 0, principal_id};
	int changed = 0;
	kms_err rc;

	if (step == 0 || step > INT64_MAX)
		return kms_errf(KMS_ERR_INVALID, "bad TOTP step");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = tx_begin(s)) != KMS_OK) {
		store_unlock(s);
		return rc;
	}
	/* Activation moves the pending seed and recovery codes into force: the row must
	 * still be what kmsd wrote, and gets its new MAC in the same transaction. */
	if (activate && (rc = mfa_am_verify_locked(s, principal_id)) != KMS_OK)
		goto done;
	/* The compare-and-set that makes a step good once: only a step greater than the
	 * stored one is written, so two requests racing with one code cannot both pass. */
	rc = mfa_change(s,
			"UPDATE principal_mfa SET last_step = ?1, failures = 0, mfa_at = ?2, updated = ?2, "
			"  state = CASE WHEN ?3 != 0 THEN 'active' ELSE state END, "
			"  sealed_seed = CASE WHEN ?3 != 0 AND pending_seed IS NOT NULL THEN pending_seed ELSE sealed_seed END, "
			"  recovery = CASE WHEN ?3 != 0 AND pending_seed IS NOT NULL THEN pending_recovery ELSE recovery END, "
			"  pending_seed = CASE WHEN ?3 != 0 THEN NULL ELSE pending_seed END, "
			"  pending_recovery = CASE WHEN ?3 != 0 THEN NULL ELSE pending_recovery END "
			"WHERE principal_id = ?4 AND locked = 0 AND last_step < ?1 "
			"  AND (state = 'active' OR ?3 != 0)",
			v, NULL, 4, &changed);
	if (rc == KMS_OK && changed != 1)
		rc = kms_errf(KMS_ERR_CONFLICT, "TOTP step already used");
	if (rc == KMS_OK && activate)
		rc = mfa_am_seal_locked(s, principal_id);
	if (rc == KMS_OK)
		rc = tx_commit(s);
done:
	if (rc != KMS_OK)
		tx_rollback(s);
	store_unlock(s);
	return rc;
}

kms_err store_mfa_use_recovery(struct store *s, int64_t principal_id, const char *old_set, const char *new_set,
			       int64_t now)
{
	int64_t v[4] = {0, now, principal_id, 0};
	const char *t[4] = {new_set, NULL, NULL, old_set};
	int changed = 0;
	kms_err rc;

	if (old_set == NULL || new_set == NULL || strlen(new_set) > STORE_MFA_RECOVERY_MAX)
		return kms_errf(KMS_ERR_INVALID, "bad recovery code set");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = tx_begin(s)) != KMS_OK) {
		store_unlock(s);
		return rc;
	}
	if ((rc = mfa_am_verify_locked(s, principal_id)) == KMS_OK)
		rc = mfa_change(s,
				"UPDATE principal_mfa SET recovery = ?1, failures = 0, mfa_at = ?2, updated = ?2 "
				"WHERE principal_id = ?3 AND locked = 0 AND state = 'active' AND recovery = ?4",
				v, t, 4, &changed);
	if (rc == KMS_OK && changed != 1)
		rc = kms_errf(KMS_ERR_CONFLICT, "recovery code already used");
	if (rc == KMS_OK)
		rc = mfa_am_seal_locked(s, principal_id);
	if (rc == KMS_OK)
		rc = tx_commit(s);
	if (rc != KMS_OK)
		tx_rollback(s);
	store_unlock(s);
	return rc;
}

kms_err store_mfa_fail(struct store *s, int64_t principal_id, unsigned limit, int64_t now, uint32_t *failures,
		       bool *locked)
{
	int64_t v[3] = {(int64_t)limit, now, principal_id};
	db_stmt *st = NULL;
	int changed = 0;
	kms_err rc;

	if (limit < 1)
		return kms_errf(KMS_ERR_INVALID, "bad lockout limit");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = tx_begin(s)) != KMS_OK)
		goto out;
	rc = mfa_change(s,
			PICK(s,
			     "UPDATE principal_mfa SET failures = min(failures + 1, 1000000), "
			     "  locked = CASE WHEN failures + 1 >= ?1 THEN 1 ELSE locked END, updated = ?2 "
			     "WHERE principal_id = ?3",
			     "UPDATE principal_mfa SET failures = LEAST(failures + 1, 1000000), "
			     "  locked = CASE WHEN failures + 1 >= ?1 THEN 1 ELSE locked END, updated = ?2 "
			     "WHERE principal_id = ?3"),
			v, NULL, 3, &changed);
	if (rc == KMS_OK && changed != 1)
		rc = kms_errf(KMS_ERR_NOT_FOUND, "no MFA enrolment");
	if (rc == KMS_OK)
		rc = mfa_prepare(s, "SELECT failures, locked FROM principal_mfa WHERE principal_id = ?1", &st);
	if (rc == KMS_OK && db_bind_int64(st, 1, principal_id) != DB_OK)
		rc = db_fail(s, "mfa fail bind");
	if (rc == KMS_OK && db_step(st) != DB_ROW)
		rc = db_fail(s, "mfa fail read");
	if (rc == KMS_OK) {
		*failures = (uint32_t)db_column_int64(st, 0);
		*locked = db_column_int(st, 1) != 0;
	}
	db_finalize(st);
	if (rc == KMS_OK)
		rc = tx_commit(s);
	if (rc != KMS_OK)
		tx_rollback(s);
out:
	store_unlock(s);
	return rc;
}

kms_err store_mfa_unlock(struct store *s, int64_t principal_id, int64_t now)
{
	int64_t v[2] = {now, principal_id};
	int changed = 0;
	kms_err rc;

	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	rc = mfa_change(s, "UPDATE principal_mfa SET failures = 0, locked = 0, updated = ?1 WHERE principal_id = ?2",
			v, NULL, 2, &changed);
	store_unlock(s);
	if (rc == KMS_OK && changed != 1)
		rc = kms_errf(KMS_ERR_NOT_FOUND, "no MFA enrolment");
	return rc;
}

kms_err store_mfa_delete(struct store *s, int64_t principal_id)
{
	int64_t v[1] = {principal_id};
	int changed = 0;
	kms_err rc;

	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	rc = mfa_change(s, "DELETE FROM principal_mfa WHERE principal_id = ?1", v, NULL, 1, &changed);
	store_unlock(s);
	if (rc == KMS_OK && changed != 1)
		rc = kms_errf(KMS_ERR_NOT_FOUND, "no MFA enrolment");
	return rc;
}

kms_err store_mfa_put_pending(struct store *s, int64_t principal_id, const uint8_t *sealed, size_t sealed_len,
			      const char *recovery, int64_t now)
{
	db_stmt *st = NULL;
	kms_err rc;

	if (sealed == NULL || sealed_len == 0 || sealed_len > STORE_MFA_SEALED_MAX || recovery == NULL ||
	    strlen(recovery) > STORE_MFA_RECOVERY_MAX)
		return kms_errf(KMS_ERR_INVALID, "bad MFA re-enrolment");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = tx_begin(s)) != KMS_OK) {
		store_unlock(s);
		return rc;
	}
	if ((rc = mfa_am_verify_locked(s, principal_id)) != KMS_OK)
		goto out;
	rc = mfa_prepare(s,
			 "UPDATE principal_mfa SET pending_seed = ?1, pending_recovery = ?2, updated = ?3 "
			 "WHERE principal_id = ?4 AND state = 'active' AND locked = 0",
			 &st);
	if (rc != KMS_OK)
		goto out;
	if (db_bind_blob(st, 1, sealed, (int)sealed_len, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 2, recovery, -1, DB_STATIC) != DB_OK ||
	    db_bind_int64(st, 3, now) != DB_OK || db_bind_int64(st, 4, principal_id) != DB_OK) {
		rc = db_fail(s, "mfa pending bind");
		goto out;
	}
	if (db_step(st) != DB_DONE) {
		rc = db_fail(s, "mfa pending");
		goto out;
	}
	rc = db_changes(s->db) == 1 ? KMS_OK : kms_errf(KMS_ERR_CONFLICT, "no active, unlocked enrolment");
	if (rc == KMS_OK)
		rc = mfa_am_seal_locked(s, principal_id);
	if (rc == KMS_OK)
		rc = tx_commit(s);
out:
	db_finalize(st);
	if (rc != KMS_OK)
		tx_rollback(s);
	store_unlock(s);
	return rc;
}

/* ---- authority-row MACs: set-up and the one-time sealing of older rows ---- */

void store_set_authmac(struct store *s, store_mac_fn mac, void *mac_ctx, store_integrity_fn bad, void *bad_ctx)
{
	if (s == NULL)
		return;
	if (mac != NULL && (mac != s->am_seen_fn || mac_ctx != s->am_seen_ctx)) {
		/* another key (or token): what verified under the old one proves nothing */
		free(s->am_seen);
		s->am_seen = NULL;
		s->am_seen_fn = mac;
		s->am_seen_ctx = mac_ctx;
	}
	s->am_mac = mac;
	s->am_ctx = mac_ctx;
	s->am_bad = bad;
	s->am_bad_ctx = bad_ctx;
}

/* One table's rows without a MAC: `select` returns the row's two key columns (rowid
 * and 0 for a table with a rowid), then the encoded fields in order, whose kinds are
 * `kinds` ('i' integer, 'b' bytes); `update` takes the MAC as ?1 and the keys as ?2 and
 * (if it names it) ?3. Encoded while reading, MAC'd and written after the read. */
static kms_err am_seal_table_locked(struct store *s, enum store_am_table t, const char *select, const char *kinds,
				    const char *update, size_t *sealed)
{
	struct pending {
		int64_t k1, k2;
		uint8_t *enc;
		size_t len;
	} *rows = NULL;
	size_t cap = 0, cnt = 0, nf = strlen(kinds);
	db_stmt *st = NULL, *up = NULL;
	int src;
	kms_err rc = KMS_OK;

	if (db_prepare(s->db, select, false, &st) != DB_OK) {
		rc = db_fail(s, "authority mac select");
		goto out;
	}
	while ((src = db_step(st)) == DB_ROW) {
		struct store_am_field f[STORE_AM_FIELDS_MAX];
		void *g;

		for (size_t i = 0; i < nf; i++) {
			memset(&f[i], 0, sizeof(f[i]));
			if (kinds[i] == 'i') {
				f[i].kind = STORE_AM_INT;
				f[i].i = db_column_int64(st, (int)i + 2);
			} else {
				f[i].kind = STORE_AM_BYTES;
				f[i].b = db_column_blob(st, (int)i + 2);
				f[i].n = (size_t)db_column_bytes(st, (int)i + 2);
			}
		}
		if ((g = grow(rows, &cap, cnt, sizeof(*rows))) == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "out of memory");
			goto out;
		}
		rows = g;
		rows[cnt].k1 = db_column_int64(st, 0);
		rows[cnt].k2 = db_column_int64(st, 1);
		if ((rc = store_am_encode(t, f, nf, &rows[cnt].enc, &rows[cnt].len)) != KMS_OK)
			goto out;
		cnt++;
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "authority mac select");
		goto out;
	}
	if (cnt > 0 && db_prepare(s->db, update, false, &up) != DB_OK) {
		rc = db_fail(s, "authority mac update");
		goto out;
	}
	for (size_t i = 0; i < cnt; i++) {
		uint8_t mac[STORE_MAC_LEN];

		if ((rc = s->am_mac(s->am_ctx, rows[i].enc, rows[i].len, mac)) != KMS_OK)
			goto out;
		if (db_bind_blob(up, 1, mac, STORE_MAC_LEN, DB_TRANSIENT) != DB_OK ||
		    db_bind_int64(up, 2, rows[i].k1) != DB_OK ||
		    (db_bind_parameter_count(up) >= 3 && db_bind_int64(up, 3, rows[i].k2) != DB_OK) ||
		    stmt_exec(up) != DB_DONE) {
			rc = db_fail(s, "authority mac update");
			goto out;
		}
		(*sealed)++;
	}
out:
	for (size_t i = 0; i < cnt; i++)
		free(rows[i].enc);
	free(rows);
	db_finalize(st);
	db_finalize(up);
	return rc;
}

kms_err store_authmac_init(struct store *s, size_t *sealed, bool *first)
{
	static const struct {
		enum store_am_table t;
		const char *select, *kinds, *update;
		const char *select_pg; /* NULL: select runs on PostgreSQL too */
	} tables[] = {
		{STORE_AM_PRINCIPAL, "SELECT rowid, 0, id, name, role FROM principals WHERE mac IS NULL", "ibb",
		 "UPDATE principals SET mac = ?1 WHERE rowid = ?2", NULL},
		{STORE_AM_TOKEN,
		 "SELECT rowid, 0, accessor, principal_id, hash, expires, revoked != 0 FROM api_tokens "
		 "WHERE mac IS NULL",
		 "bibii", "UPDATE api_tokens SET mac = ?1 WHERE rowid = ?2", NULL},
		/* WITHOUT ROWID: keyed by (principal_id, tenant_id) */
		{STORE_AM_TENANT,
		 "SELECT principal_id, tenant_id, principal_id, tenant_id FROM principal_tenants WHERE mac IS NULL", "ii",
		 "UPDATE principal_tenants SET mac = ?1 WHERE principal_id = ?2 AND tenant_id = ?3", NULL},
		{STORE_AM_POLICY, "SELECT rowid, 0, version, text FROM policies WHERE mac IS NULL", "ib",
		 "UPDATE policies SET mac = ?1 WHERE rowid = ?2", NULL},
		{STORE_AM_CERT, "SELECT rowid, 0, id, principal_id, kind, value FROM principal_certs WHERE mac IS NULL",
		 "iibb", "UPDATE principal_certs SET mac = ?1 WHERE rowid = ?2", NULL},
		{STORE_AM_MFA,
		 "SELECT principal_id, 0, principal_id, state, sealed_seed, recovery, pending_seed IS NOT NULL, "
		 "coalesce(pending_seed, x''), CASE WHEN pending_seed IS NULL THEN '' ELSE pending_recovery END "
		 "FROM principal_mfa WHERE mac IS NULL",
		 "ibbbibb", "UPDATE principal_mfa SET mac = ?1 WHERE principal_id = ?2",
		 "SELECT principal_id, 0, principal_id, state, sealed_seed, recovery, pending_seed IS NOT NULL, "
		 "coalesce(pending_seed, '\\x'::bytea), CASE WHEN pending_seed IS NULL THEN '' ELSE pending_recovery END "
		 "FROM principal_mfa WHERE mac IS NULL"},
	};
	db_stmt *st;
	bool in_tx = false;
	int src;
	kms_err rc;

	if (sealed == NULL || first == NULL)
		return kms_errf(KMS_ERR_INVALID, "no output for authority macs");
	*sealed = 0;
	*first = false;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if (s->am_mac == NULL) {
		rc = kms_errf(KMS_ERR_INVALID, "no MAC function for authority rows");
		goto out;
	}
	if ((rc = tx_begin(s)) != KMS_OK)
		goto out;
	in_tx = true;
	st = s->st[ST_META_GET];
	if (db_bind_text(st, 1, STORE_META_AUTHMAC, -1, DB_STATIC) != DB_OK) {
		rc = db_fail(s, "meta bind");
		stmt_release(st);
		goto out;
	}
	src = db_step(st);
	stmt_release(st);
	if (src == DB_ROW) {
		rc = tx_commit(s); /* done before: a NULL MAC from now on is an attack */
		in_tx = rc != KMS_OK;
		goto out;
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "meta get");
		goto out;
	}
	for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]); i++)
		if ((rc = am_seal_table_locked(s, tables[i].t,
					       db_backend(s->db) == DB_PG && tables[i].select_pg != NULL ? tables[i].select_pg
													 : tables[i].select,
					       tables[i].kinds, tables[i].update,
					       sealed)) != KMS_OK)
			goto out;
	st = s->st[ST_META_SET];
	if (db_bind_text(st, 1, STORE_META_AUTHMAC, -1, DB_STATIC) != DB_OK ||
	    db_bind_text(st, 2, "1", -1, DB_STATIC) != DB_OK || stmt_exec(st) != DB_DONE) {
		rc = db_fail(s, "meta set");
		stmt_release(st);
		goto out;
	}
	if ((rc = tx_commit(s)) != KMS_OK)
		goto out;
	in_tx = false;
	*first = true;
out:
	if (in_tx)
		tx_rollback(s);
	store_unlock(s);
	return rc;
}

/* ---- change stamp (caches in front of the store) ---- */

/* The wal-index header (https://www.sqlite.org/walformat.html "The WAL-Index Header"):
 * the first 96 bytes of the -shm file are two copies of a 48-byte header, which every
 * commit by any connection of any process rewrites (its iChange counter counts
 * transactions, mxFrame and the salts move with the log); a reader of the database
 * trusts it only when both copies agree. SQLite maps the file into this process for
 * its own use; xShmMap hands out that mapping (region 0), so reading it costs no
 * system call. Called with the store's lock held; false: use PRAGMA data_version. */
#define WAL_HDR_LEN 96
#define WAL_HDR_VERSION 3007000u /* iVersion, the first 4 bytes (native order) */
#define WAL_REGION_LEN 32768	 /* the wal-index's region size */

static bool wal_header(struct store *s, unsigned char out[WAL_HDR_LEN])
{
	uint32_t version;

	if (s->wal_hdr == NULL && !s->wal_hdr_off) {
		sqlite3_file *f = NULL;
		volatile void *p = NULL;

		if (sqlite3_file_control(db_sqlite_handle(s->db), "main", SQLITE_FCNTL_FILE_POINTER, &f) !=
			    SQLITE_OK ||
		    f == NULL || f->pMethods == NULL || f->pMethods->iVersion < 2 || f->pMethods->xShmMap == NULL ||
		    f->pMethods->xShmMap(f, 0, WAL_REGION_LEN, 0, &p) != SQLITE_OK || p == NULL) {
			s->wal_hdr_off = true;
			kms_info("store: the wal-index is not mapped: PRAGMA data_version on every "
				 "cache check");
			return false;
		}
		s->wal_hdr = p;
	}
	if (s->wal_hdr == NULL)
		return false;
	/* another process's writes to the shared mapping: loads that see them in order
	 * (the mapping is page-aligned, the header 24 aligned words) */
	for (size_t i = 0; i < WAL_HDR_LEN / 4; i++) {
		uint32_t w = __atomic_load_n((const volatile uint32_t *)s->wal_hdr + i, __ATOMIC_ACQUIRE);

		memcpy(out + 4 * i, &w, sizeof(w));
	}
	memcpy(&version, out, sizeof(version));
	/* not (yet) a wal-index this code knows, or a copy in the middle of a rewrite */
	return version == WAL_HDR_VERSION && out[12] == 1 &&
	       memcmp(out, out + WAL_HDR_LEN / 2, WAL_HDR_LEN / 2) == 0;
}

kms_err store_change_stamp(struct store *s, struct store_stamp *out)
{
	unsigned char hdr[WAL_HDR_LEN];
	bool have_hdr;
	kms_err rc;
	int src;

	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if (db_backend(s->db) == DB_PG) {
		/* Other nodes' changes: as far as the change log has been read (cluster.c
		 * reads it every cluster_sync_ms and empties the caches it concerns). */
		out->external = s->changes_seen;
		out->local = db_total_changes(s->db) - s->quiet_changes;
		rc = KMS_OK;
		goto out;
	}
	/* No commit anywhere since the last PRAGMA data_version (the header is as it was
	 * read just before it): its answer still holds. A commit in between, ours or
	 * another process's, changed the header, and the PRAGMA runs again; it answers the
	 * same for this connection's own commits, so those cost one PRAGMA and no flush. */
	have_hdr = wal_header(s, hdr);
	if (have_hdr && memcmp(hdr, s->wal_seen, WAL_HDR_LEN) == 0) {
		out->external = s->wal_external;
		out->local = db_total_changes(s->db) - s->quiet_changes;
		rc = KMS_OK;
		goto out;
	}
	memset(s->wal_seen, 0, WAL_HDR_LEN);
	if (s->data_version == NULL &&
	    db_prepare(s->db, "PRAGMA data_version", true, &s->data_version) != DB_OK) {
		s->data_version = NULL;
		rc = db_fail(s, "data version prepare");
		goto out;
	}
	s->stamp_queries++;
	src = db_step(s->data_version);
	if (src != DB_ROW) {
		stmt_release(s->data_version);
		rc = db_fail(s, "data version");
		goto out;
	}
	out->external = db_column_int64(s->data_version, 0);
	stmt_release(s->data_version);
	if (have_hdr) {
		memcpy(s->wal_seen, hdr, WAL_HDR_LEN);
		s->wal_external = out->external;
	}
	out->local = db_total_changes(s->db) - s->quiet_changes;
	rc = KMS_OK;
out:
	store_unlock(s);
	return rc;
}

uint64_t store_change_stamp_queries(struct store *s)
{
	uint64_t n;

	if (store_lock(s) != KMS_OK)
		return 0;
	n = s->stamp_queries;
	store_unlock(s);
	return n;
}

kms_err store_approvals_interrupt(struct store *s, const char *executor, int64_t now,
				  struct store_approval **out, size_t *n)
{
	db_stmt *st = NULL;
	struct store_approval *arr = NULL, *g;
	size_t cnt = 0, cap = 0;
	int src, ch;
	kms_err rc;

	*out = NULL;
	*n = 0;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = tx_begin(s)) != KMS_OK)
		goto unlock;
	if (executor != NULL && db_backend(s->db) != DB_PG) {
		rc = kms_errf(KMS_ERR_INVALID, "approvals name the run that runs them only on PostgreSQL");
		goto fail;
	}
	if ((rc = prep(s,
		       executor == NULL ? "SELECT " APPROVAL_COLS " FROM approval_requests "
					  "WHERE state = 'executing' AND interrupted = 0"
					: "SELECT " APPROVAL_COLS " FROM approval_requests "
					  "WHERE state = 'executing' AND interrupted = 0 AND executor = ?1",
		       &st)) != KMS_OK)
		goto fail;
	if (executor != NULL && db_bind_text(st, 1, executor, -1, DB_STATIC) != DB_OK) {
		rc = db_fail(s, "interrupt bind");
		goto fail;
	}
	while ((src = db_step(st)) == DB_ROW) {
		if ((g = grow(arr, &cap, cnt, sizeof(*arr))) == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "interrupt");
			goto fail;
		}
		arr = g;
		if ((rc = row_approval(st, &arr[cnt], false)) != KMS_OK)
			goto fail;
		cnt++;
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "interrupt select");
		goto fail;
	}
	(void)db_finalize(st);
	st = NULL;
	if (cnt > 0 && (rc = exec_changes(s,
					  executor == NULL ? "UPDATE approval_requests SET interrupted = 1, finished = ?3 "
							     "WHERE state = 'executing' AND interrupted = 0"
							   : "UPDATE approval_requests SET interrupted = 1, finished = ?3 "
							     "WHERE state = 'executing' AND interrupted = 0 AND executor = ?1",
					  executor, NULL, now, &ch)) != KMS_OK)
		goto fail;
	if ((rc = tx_commit(s)) != KMS_OK)
		goto fail;
	*out = arr;
	*n = cnt;
	arr = NULL;
	goto unlock;
fail:
	(void)db_finalize(st);
	tx_rollback(s);
unlock:
	free(arr);
	store_unlock(s);
	return rc;
}

/* ---- cluster: change log, watch connection, leases ---- */

static bool valid_node_id(const char *id)
{
	size_t n = 0;

	if (id == NULL)
		return false;
	for (; id[n] != '\0'; n++) {
		char c = id[n];

		if (n >= 64 || !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
				 c == '.' || c == '_' || c == ':' || c == '-'))
			return false;
	}
	return n > 0;
}

kms_err store_set_node(struct store *s, const char *node_id)
{
	kms_err rc;

	if (!valid_node_id(node_id))
		return kms_errf(KMS_ERR_INVALID, "node id must be 1 to 64 characters of A-Z a-z 0-9 . _ : -");
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	rc = db_backend(s->db) == DB_PG ? pg_session(s, node_id) : KMS_OK; /* id checked: no quoting needed */
	store_unlock(s);
	return rc;
}

const char *store_executor_split(const char *executor, char node[65])
{
	const char *slash = executor ? strchr(executor, '/') : NULL;

	node[0] = '\0';
	if (slash == NULL || slash - executor > 64)
		return NULL;
	memcpy(node, executor, (size_t)(slash - executor));
	node[slash - executor] = '\0';
	return slash + 1;
}

bool store_executor_valid(const char *executor)
{
	char node[65];
	const char *run = store_executor_split(executor, node);

	return run != NULL && valid_node_id(node) && strlen(run) == STORE_RUN_LEN &&
	       strspn(run, "0123456789abcdef") == STORE_RUN_LEN;
}

kms_err store_set_executor(struct store *s, const char *executor)
{
	kms_err rc;

	if (!store_executor_valid(executor))
		return kms_errf(KMS_ERR_INVALID, "executor must be <node_id>/<%d lower-case hex digits>", STORE_RUN_LEN);
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	snprintf(s->executor, sizeof(s->executor), "%s", executor);
	store_unlock(s);
	return KMS_OK;
}

kms_err store_approvals_executors(struct store *s, char (**out)[STORE_EXECUTOR_MAX + 1], size_t *n)
{
	db_stmt *st = NULL;
	char(*arr)[STORE_EXECUTOR_MAX + 1] = NULL, (*g)[STORE_EXECUTOR_MAX + 1];
	size_t cnt = 0, cap = 0;
	int src;
	kms_err rc;

	*out = NULL;
	*n = 0;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if (db_backend(s->db) != DB_PG)
		goto unlock; /* one node: nothing runs elsewhere */
	if ((rc = prep(s,
		       "SELECT DISTINCT executor FROM approval_requests WHERE state = 'executing' "
		       "AND interrupted = 0 AND executor IS NOT NULL ORDER BY 1",
		       &st)) != KMS_OK)
		goto unlock;
	while ((src = db_step(st)) == DB_ROW) {
		const char *t = (const char *)db_column_text(st, 0);

		if (t == NULL || !store_executor_valid(t))
			continue; /* the CHECK allows any 3-96 bytes; a name kmsd never writes is no run */
		if ((g = grow(arr, &cap, cnt, sizeof(*arr))) == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "executors");
			goto unlock;
		}
		arr = g;
		snprintf(arr[cnt++], sizeof(arr[0]), "%s", t);
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "executors");
		goto unlock;
	}
	*out = arr;
	*n = cnt;
	arr = NULL;
unlock:
	(void)db_finalize(st);
	free(arr);
	store_unlock(s);
	return rc;
}

#define CLUSTER_PRUNED_META "cluster_pruned_upto"

kms_err store_changes_since(struct store *s, int64_t after, size_t max, struct store_change **out, size_t *n,
			    bool *gap)
{
	struct store_change *arr = NULL;
	size_t cap = 0, cnt = 0;
	db_stmt *st = NULL;
	int src;
	kms_err rc;

	if (out == NULL || n == NULL || gap == NULL || max == 0)
		return kms_errf(KMS_ERR_INVALID, "bad change query");
	*out = NULL;
	*n = 0;
	*gap = false;
	if (db_backend(s->db) != DB_PG)
		return KMS_OK;
	if (max > INT64_MAX)
		max = INT64_MAX;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	/* One statement, so the pruning mark and the rows are from one snapshot. */
	if ((rc = prep(s,
		       "SELECT seq, kind, ref, node, time, "
		       "  (SELECT coalesce(max(v::bigint), 0) FROM meta WHERE k = '" CLUSTER_PRUNED_META "') "
		       "FROM (SELECT 0 AS o, seq, kind, ref, node, time FROM cluster_changes WHERE seq > ?1 "
		       "      UNION ALL SELECT 1, 0, '', 0, '', 0) c "
		       "ORDER BY o, seq LIMIT ?2",
		       &st)) != KMS_OK)
		goto out;
	if (db_bind_int64(st, 1, after) != DB_OK || db_bind_int64(st, 2, (int64_t)max + 1) != DB_OK) {
		rc = db_fail(s, "changes bind");
		goto out;
	}
	while ((src = db_step(st)) == DB_ROW) {
		void *g;

		/* every row carries the mark; the sentinel row (o = 1) is there for an empty log */
		if (db_column_int64(st, 5) > after)
			*gap = true;
		if (db_column_int64(st, 0) == 0 || cnt == max)
			continue;
		if ((g = grow(arr, &cap, cnt, sizeof(*arr))) == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "out of memory");
			goto out;
		}
		arr = g;
		memset(&arr[cnt], 0, sizeof(arr[cnt]));
		arr[cnt].seq = db_column_int64(st, 0);
		arr[cnt].ref = db_column_int64(st, 2);
		arr[cnt].time = db_column_int64(st, 4);
		if ((rc = col_text(st, 1, arr[cnt].kind, sizeof(arr[cnt].kind), "cluster_changes")) != KMS_OK ||
		    (rc = col_text(st, 3, arr[cnt].node, sizeof(arr[cnt].node), "cluster_changes")) != KMS_OK)
			goto out;
		cnt++;
	}
	if (src != DB_DONE) {
		rc = db_fail(s, "changes");
		goto out;
	}
	*out = arr;
	*n = cnt;
	if (cnt > 0 && arr[cnt - 1].seq > s->changes_seen)
		s->changes_seen = arr[cnt - 1].seq;
	arr = NULL;
	rc = KMS_OK;
out:
	free(arr);
	(void)db_finalize(st);
	store_unlock(s);
	return rc;
}

kms_err store_changes_head(struct store *s, int64_t *seq)
{
	db_stmt *st = NULL;
	int src;
	kms_err rc;

	if (seq == NULL)
		return kms_errf(KMS_ERR_INVALID, "no output for the change head");
	*seq = 0;
	if (db_backend(s->db) != DB_PG)
		return KMS_OK;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	if ((rc = prep(s, "SELECT coalesce(max(seq), 0) FROM cluster_changes", &st)) != KMS_OK)
		goto out;
	src = db_step(st);
	if (src == DB_ROW)
		*seq = db_column_int64(st, 0);
	else
		rc = db_fail(s, "change head");
out:
	(void)db_finalize(st);
	store_unlock(s);
	return rc;
}

kms_err store_changes_prune(struct store *s, int64_t older_than_time)
{
	db_stmt *st = NULL;
	kms_err rc;

	if (db_backend(s->db) != DB_PG)
		return KMS_OK;
	if ((rc = store_lock(s)) != KMS_OK)
		return rc;
	/* The deleted rows' highest seq becomes the pruning mark in the same statement: a
	 * reader behind it learns that it missed changes (store_changes_since's *gap). */
	if ((rc = prep(s,
		       "WITH d AS (DELETE FROM cluster_changes WHERE time < ?1 RETURNING seq) "
		       "INSERT INTO meta (k, v) SELECT '" CLUSTER_PRUNED_META "', max(seq)::text FROM d "
		       "HAVING count(*) > 0 "
		       "ON CONFLICT (k) DO UPDATE SET v = GREATEST(meta.v::bigint, excluded.v::bigint)::text",
		       &st)) != KMS_OK)
		goto out;
	if (db_bind_int64(st, 1, older_than_time) != DB_OK || db_step(st) != DB_DONE)
		rc = db_fail(s, "change prune");
	else
		s->quiet_changes += db_changes(s->db); /* meta: bookkeeping */
out:
	(void)db_finalize(st);
	store_unlock(s);
	return rc;
}

#define WATCH_LEASES_MAX 16

struct store_watch {
	PGconn *pg; /* NULL: SQLite, a single node */
	char *uri;
	bool broken;
	int64_t leases[WATCH_LEASES_MAX]; /* advisory keys this connection holds */
	size_t n_leases;
};

static kms_err watch_fail(struct store_watch *w, const char *what)
{
	w->broken = true;
	w->n_leases = 0; /* a lost session has released them */
	kms_error("store: watch %s: %s", what, PQerrorMessage(w->pg));
	return kms_errf(KMS_ERR_STORE, "metadata store error");
}

static kms_err watch_connect(struct store_watch *w)
{
	PGresult *res;

	if (w->pg != NULL && !w->broken && PQstatus(w->pg) == CONNECTION_OK)
		return KMS_OK;
	if (w->pg == NULL)
		w->pg = db_pg_connect(w->uri);
	else
		PQreset(w->pg);
	if (w->pg == NULL)
		return kms_errf(KMS_ERR_NOMEM, "out of memory");
	w->n_leases = 0;
	if (PQstatus(w->pg) != CONNECTION_OK)
		return watch_fail(w, "connect");
	res = PQexec(w->pg, "LISTEN kmsd_changes");
	if (PQresultStatus(res) != PGRES_COMMAND_OK) {
		PQclear(res);
		return watch_fail(w, "listen");
	}
	PQclear(res);
	w->broken = false;
	return KMS_OK;
}

kms_err store_watch_open(const char *path_or_uri, struct store_watch **out)
{
	struct store_watch *w;
	kms_err rc;

	if (out == NULL || path_or_uri == NULL || path_or_uri[0] == '\0')
		return kms_errf(KMS_ERR_INVALID, "store path missing");
	*out = NULL;
	w = calloc(1, sizeof(*w));
	if (w == NULL)
		return kms_errf(KMS_ERR_NOMEM, "out of memory");
	if (!is_pg_uri(path_or_uri)) {
		*out = w;
		return KMS_OK;
	}
	w->uri = strdup(path_or_uri);
	if (w->uri == NULL) {
		free(w);
		return kms_errf(KMS_ERR_NOMEM, "out of memory");
	}
	if ((rc = watch_connect(w)) != KMS_OK) {
		store_watch_close(w);
		return rc;
	}
	*out = w;
	return KMS_OK;
}

void store_watch_close(struct store_watch *w)
{
	if (w == NULL)
		return;
	if (w->pg != NULL)
		PQfinish(w->pg);
	free(w->uri);
	free(w);
}

static bool watch_drain(struct store_watch *w)
{
	PGnotify *nf;
	bool any = false;

	while ((nf = PQnotifies(w->pg)) != NULL) {
		any = true;
		PQfreemem(nf);
	}
	return any;
}

kms_err store_watch_wait(struct store_watch *w, int timeout_ms, bool *notified)
{
	struct pollfd pfd;
	kms_err rc;
	int prc;

	if (w == NULL || notified == NULL || timeout_ms < 0)
		return kms_errf(KMS_ERR_INVALID, "bad watch wait");
	*notified = false;
	if (w->uri == NULL) {
		(void)poll(NULL, 0, timeout_ms); /* SQLite: nothing to watch */
		return KMS_OK;
	}
	if ((rc = watch_connect(w)) != KMS_OK)
		return rc;
	if (PQconsumeInput(w->pg) == 0)
		return watch_fail(w, "read");
	if (watch_drain(w)) {
		*notified = true;
		return KMS_OK;
	}
	pfd.fd = PQsocket(w->pg);
	pfd.events = POLLIN;
	pfd.revents = 0;
	if (pfd.fd < 0)
		return watch_fail(w, "socket");
	prc = poll(&pfd, 1, timeout_ms);
	if (prc < 0) {
		if (errno == EINTR)
			return KMS_OK;
		return kms_errf(KMS_ERR_IO, "watch poll: %s", strerror(errno));
	}
	if (prc == 0)
		return KMS_OK;
	if (PQconsumeInput(w->pg) == 0 || PQstatus(w->pg) != CONNECTION_OK)
		return watch_fail(w, "read");
	*notified = watch_drain(w);
	return KMS_OK;
}

/* FNV-1a, 64 bits: the advisory lock key of a lease name */
static int64_t lease_key(const char *name)
{
	uint64_t h = 1469598103934665603ULL;

	for (const unsigned char *p = (const unsigned char *)name; *p != '\0'; p++) {
		h ^= *p;
		h *= 1099511628211ULL;
	}
	return (int64_t)h;
}

/* One lease statement on the watch connection, with the lease's key as $1; *t: its one
 * boolean answer. */
static kms_err lease_query(struct store_watch *w, const char *sql, int64_t k, const char *what, bool *t)
{
	char key[24];
	const char *vals[1] = {key};
	PGresult *res;

	snprintf(key, sizeof(key), "%" PRId64, k);
	res = PQexecParams(w->pg, sql, 1, NULL, vals, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
		PQclear(res);
		return watch_fail(w, what);
	}
	*t = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	PQclear(res);
	return KMS_OK;
}

kms_err store_watch_lease(struct store_watch *w, const char *name, bool *held)
{
	int64_t k;
	size_t i;
	kms_err rc;

	if (w == NULL || name == NULL || name[0] == '\0' || held == NULL)
		return kms_errf(KMS_ERR_INVALID, "bad lease request");
	*held = false;
	if (w->uri == NULL) {
		*held = true; /* SQLite: this node is the cluster */
		return KMS_OK;
	}
	if ((rc = watch_connect(w)) != KMS_OK)
		return rc;
	k = lease_key(name);
	for (i = 0; i < w->n_leases; i++)
		if (w->leases[i] == k)
			break;
	/* Held already: a round trip proves the session (and so the lock) is still there
	 * without stacking the lock again. */
	if ((rc = lease_query(w,
			      i < w->n_leases ? "SELECT true WHERE $1::bigint IS NOT NULL"
					      : "SELECT pg_try_advisory_lock($1::bigint)",
			      k, "lease", held)) != KMS_OK)
		return rc;
	if (*held && i == w->n_leases) {
		if (w->n_leases == WATCH_LEASES_MAX)
			return kms_errf(KMS_ERR_INTERNAL, "too many leases on one watch connection");
		w->leases[w->n_leases++] = k;
	}
	return KMS_OK;
}

kms_err store_watch_lease_free(struct store_watch *w, const char *name, bool *is_free)
{
	int64_t k;
	kms_err rc;

	if (w == NULL || name == NULL || name[0] == '\0' || is_free == NULL)
		return kms_errf(KMS_ERR_INVALID, "bad lease probe");
	*is_free = false;
	if (w->uri == NULL)
		return KMS_OK; /* SQLite: one node, which holds everything */
	if ((rc = watch_connect(w)) != KMS_OK)
		return rc;
	k = lease_key(name);
	for (size_t i = 0; i < w->n_leases; i++)
		if (w->leases[i] == k)
			return KMS_OK; /* ours */
	/* taken and given back in one statement: the probe holds it for no longer than that */
	return lease_query(w,
			   "SELECT CASE WHEN pg_try_advisory_lock($1::bigint) THEN pg_advisory_unlock($1::bigint) "
			   "ELSE false END",
			   k, "lease probe", is_free);
}
