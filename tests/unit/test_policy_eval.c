/* The policy evaluator as a table (allow, deny, deny wins, default deny, every condition
 * kind, globs, operation wildcards, MFA and quorum outputs), plus: the built-in default
 * document allows and denies exactly like policy_decide() (policy.h) on every role, scope,
 * tenant and operation, and asks for an MFA step-up on exactly the admin operations that
 * change something. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "policy/policy.h"
#include "policy/policy_doc.h"
#include "policy/policy_eval.h"

static const char test_doc[] =
	"{\"version\": 7, \"rules\": [\n"
	" {\"name\": \"health\", \"effect\": \"allow\", \"principals\": [\"*\"], \"operations\": [\"sys.health\"]},\n"
	" {\"name\": \"ehr-phi\", \"effect\": \"allow\", \"principals\": [\"ehr-*\"], \"tenants\": [\"hosp-*\"],\n"
	"  \"keys\": [\"phi-*\"], \"operations\": [\"datakey\", \"encrypt\", \"decrypt\", \"rewrap\"],\n"
	"  \"conditions\": {\"context\": {\"purpose\": [\"treatment\", \"payment\", \"operations\"]}}},\n"
	" {\"name\": \"lab-office-hours\", \"effect\": \"allow\", \"principals\": [\"lab-pipeline\"],\n"
	"  \"tenants\": [\"hosp-a\"], \"operations\": [\"encrypt\", \"datakey\"],\n"
	"  \"conditions\": {\"time\": {\"start\": \"06:00\", \"end\": \"20:00\",\n"
	"                           \"weekdays\": [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]}}},\n"
	" {\"name\": \"night-batch\", \"effect\": \"allow\", \"principals\": [\"batch\"], \"operations\": [\"rewrap\"],\n"
	"  \"conditions\": {\"time\": {\"start\": \"22:00\", \"end\": \"04:00\", \"overnight\": true, \"weekdays\": [\"fri\"]}}},\n"
	" {\"name\": \"net\", \"effect\": \"allow\", \"principals\": [\"netsvc\"], \"operations\": [\"key.read\"],\n"
	"  \"conditions\": {\"source_cidr\": [\"10.1.0.0/16\", \"192.168.7.128/25\", \"2001:db8:abcd::/48\", \"fd00::1\"]}},\n"
	" {\"name\": \"analytics-deid\", \"effect\": \"allow\", \"principals\": [\"analytics\"], \"tenants\": [\"@scope\"],\n"
	"  \"operations\": [\"decrypt\", \"key.read\"],\n"
	"  \"conditions\": {\"context\": {\"deidentified\": [\"true\"], \"purpose\": [\"research\"]}}},\n"
	" {\"name\": \"deny-analytics-phi\", \"effect\": \"deny\", \"principals\": [\"analytics\"], \"keys\": [\"phi-*\"],\n"
	"  \"operations\": [\"*\"]},\n"
	" {\"name\": \"admin\", \"effect\": \"allow\", \"principals\": [\"role:admin\"],\n"
	"  \"operations\": [\"tenant.*\", \"principal.*\", \"token.*\", \"key.*\"], \"require_mfa\": true},\n"
	" {\"name\": \"admin-no-material\", \"effect\": \"deny\", \"principals\": [\"role:admin\"],\n"
	"  \"operations\": [\"datakey\", \"encrypt\", \"decrypt\", \"rewrap\"]},\n"
	" {\"name\": \"deny-frozen\", \"effect\": \"deny\", \"principals\": [\"*\"], \"tenants\": [\"frozen\"],\n"
	"  \"operations\": [\"key.*\"]},\n"
	" {\"name\": \"rotate-quorum\", \"effect\": \"allow\", \"principals\": [\"role:admin\"], \"tenants\": [\"hosp-?\"],\n"
	"  \"operations\": [\"key.rotate\"], \"require_quorum\": 2},\n"
	" {\"name\": \"fresh-mfa-token\", \"effect\": \"allow\", \"principals\": [\"oncall-*\"], \"operations\": [\"token.create\"],\n"
	"  \"conditions\": {\"mfa_max_age\": 300}},\n"
	" {\"name\": \"breakglass\", \"effect\": \"allow\", \"principals\": [\"breakglass\"], \"operations\": [\"decrypt\"],\n"
	"  \"conditions\": {\"mfa_max_age\": 600}, \"require_mfa\": true, \"require_quorum\": 1},\n"
	" {\"name\": \"deny-blocked-host\", \"effect\": \"deny\", \"principals\": [\"*\"], \"operations\": [\"*\"],\n"
	"  \"conditions\": {\"source_cidr\": [\"203.0.113.66\"]}},\n"
	" {\"name\": \"svc-read\", \"effect\": \"allow\", \"principals\": [\"role:service\"], \"tenants\": [\"@scope\"],\n"
	"  \"operations\": [\"key.read\", \"key.list\"]}\n"
	"]}\n";

#define MON 1704067200LL /* 2024-01-01 00:00:00 UTC, a Monday */
#define DAY 86400LL
#define FRI (MON + 4 * DAY)
#define SAT (MON + 5 * DAY)
#define THU (MON + 3 * DAY)
#define HM(h, m) ((h) * 3600LL + (m) * 60LL)
#define NOW (MON + HM(10, 0))

static const int64_t scope5[] = {5};
static const int64_t scope1[] = {1};

struct tcase {
	const char *principal, *role;
	const int64_t *scope;
	size_t n_scope;
	const char *scope_name; /* one scoped tenant by name, or NULL */
	enum kms_op op;
	const char *tenant;
	int64_t tenant_id;
	const char *key;
	const char *ctx[6]; /* k, v, k, v, ... NULL-terminated */
	int64_t now;
	const char *src;
	int64_t mfa_at;
	int allow;
	const char *rule; /* deciding rule name; NULL for default deny / invalid */
	int mfa;
	unsigned quorum;
};

#define PURPOSE(v) {"purpose", v}
#define ENC KMS_OP_ENCRYPT
#define DEC KMS_OP_DECRYPT
#define DK KMS_OP_DATAKEY
#define RW KMS_OP_REWRAP

static const struct tcase cases[] = {
	/* health is public; a blocked host is denied even that (explicit deny wins) */
	{NULL, NULL, NULL, 0, NULL, KMS_OP_HEALTH, NULL, 0, NULL, {0}, NOW, "10.0.0.1", 0, 1, "health", 0, 0},
	{"root", "admin", NULL, 0, NULL, KMS_OP_HEALTH, NULL, 0, NULL, {0}, NOW, "203.0.113.66", 0, 0, "deny-blocked-host", 0, 0},
	{"root", "admin", NULL, 0, NULL, KMS_OP_HEALTH, NULL, 0, NULL, {0}, NOW, "203.0.113.67", 0, 1, "health", 0, 0},
	/* EHR: context value sets, tenant and key globs */
	{"ehr-svc", "service", NULL, 0, NULL, DK, "hosp-a", 1, "phi-1", PURPOSE("treatment"), NOW, "10.0.0.1", 0, 1, "ehr-phi", 0, 0},
	{"ehr-svc", "service", NULL, 0, NULL, ENC, "hosp-a", 1, "phi-1", PURPOSE("payment"), NOW, "10.0.0.1", 0, 1, "ehr-phi", 0, 0},
	{"ehr-svc", "service", NULL, 0, NULL, DEC, "hosp-b", 2, "phi-2", PURPOSE("operations"), NOW, NULL, 0, 1, "ehr-phi", 0, 0},
	{"ehr-svc", "service", NULL, 0, NULL, RW, "hosp-a", 1, "phi-1", PURPOSE("marketing"), NOW, NULL, 0, 0, NULL, 0, 0},
	{"ehr-svc", "service", NULL, 0, NULL, DEC, "hosp-a", 1, "phi-1", {0}, NOW, NULL, 0, 0, NULL, 0, 0},
	{"ehr-svc", "service", NULL, 0, NULL, DEC, "hosp-a", 1, "phi-1", {"dept", "er"}, NOW, NULL, 0, 0, NULL, 0, 0},
	{"ehr-svc", "service", NULL, 0, NULL, DEC, "hosp-a", 1, "phi-1", {"dept", "er", "purpose", "treatment", "mrn", "1"}, NOW, NULL, 0, 1, "ehr-phi", 0, 0},
	{"ehr-svc", "service", NULL, 0, NULL, DEC, "hosp-a", 1, "phi-1", PURPOSE("Treatment"), NOW, NULL, 0, 0, NULL, 0, 0},
	{"ehr-svc", "service", NULL, 0, NULL, DEC, "hosp-a", 1, "phi-1", PURPOSE(""), NOW, NULL, 0, 0, NULL, 0, 0},
	{"ehr-svc", "service", NULL, 0, NULL, DEC, "clinic-x", 3, "phi-1", PURPOSE("treatment"), NOW, NULL, 0, 0, NULL, 0, 0},
	{"ehr-svc", "service", NULL, 0, NULL, DEC, "hosp-a", 1, "other-1", PURPOSE("treatment"), NOW, NULL, 0, 0, NULL, 0, 0},
	{"ehr-svc", "service", NULL, 0, NULL, DEC, "hosp-a", 1, NULL, PURPOSE("treatment"), NOW, NULL, 0, 0, NULL, 0, 0},
	{"ehr-svc", "service", NULL, 0, NULL, DEC, NULL, 0, "phi-1", PURPOSE("treatment"), NOW, NULL, 0, 0, NULL, 0, 0},
	{"ehr", "service", NULL, 0, NULL, DEC, "hosp-a", 1, "phi-1", PURPOSE("treatment"), NOW, NULL, 0, 0, NULL, 0, 0},
	{"ehr-", "service", NULL, 0, NULL, DEC, "hosp-a", 1, "phi-", PURPOSE("treatment"), NOW, NULL, 0, 1, "ehr-phi", 0, 0},
	{"ehr-svc", "service", NULL, 0, NULL, KMS_OP_KEY_ROTATE, "hosp-a", 1, "phi-1", PURPOSE("treatment"), NOW, NULL, 0, 0, NULL, 0, 0},
	/* lab: time window on weekdays, end exclusive */
	{"lab-pipeline", "service", NULL, 0, NULL, ENC, "hosp-a", 1, "k", {0}, MON + HM(6, 0), NULL, 0, 1, "lab-office-hours", 0, 0},
	{"lab-pipeline", "service", NULL, 0, NULL, ENC, "hosp-a", 1, "k", {0}, MON + HM(5, 59), NULL, 0, 0, NULL, 0, 0},
	{"lab-pipeline", "service", NULL, 0, NULL, DK, "hosp-a", 1, "k", {0}, MON + HM(19, 59) + 59, NULL, 0, 1, "lab-office-hours", 0, 0},
	{"lab-pipeline", "service", NULL, 0, NULL, DK, "hosp-a", 1, "k", {0}, MON + HM(20, 0), NULL, 0, 0, NULL, 0, 0},
	{"lab-pipeline", "service", NULL, 0, NULL, ENC, "hosp-a", 1, "k", {0}, SAT + HM(12, 0), NULL, 0, 0, NULL, 0, 0},
	{"lab-pipeline", "service", NULL, 0, NULL, ENC, "hosp-a", 1, "k", {0}, FRI + HM(12, 0), NULL, 0, 1, "lab-office-hours", 0, 0},
	{"lab-pipeline", "service", NULL, 0, NULL, ENC, "hosp-a", 1, "k", {0}, MON + 7 * DAY + HM(12, 0), NULL, 0, 1, "lab-office-hours", 0, 0},
	{"lab-pipeline", "service", NULL, 0, NULL, DEC, "hosp-a", 1, "k", {0}, MON + HM(12, 0), NULL, 0, 0, NULL, 0, 0},
	{"lab-pipeline", "service", NULL, 0, NULL, ENC, "hosp-b", 2, "k", {0}, MON + HM(12, 0), NULL, 0, 0, NULL, 0, 0},
	/* night batch: window across midnight; the weekday is the day the window opened */
	{"batch", "service", NULL, 0, NULL, RW, "t", 1, "k", {0}, FRI + HM(22, 0), NULL, 0, 1, "night-batch", 0, 0},
	{"batch", "service", NULL, 0, NULL, RW, "t", 1, "k", {0}, FRI + HM(23, 59) + 59, NULL, 0, 1, "night-batch", 0, 0},
	{"batch", "service", NULL, 0, NULL, RW, "t", 1, "k", {0}, SAT + HM(0, 0), NULL, 0, 1, "night-batch", 0, 0},
	{"batch", "service", NULL, 0, NULL, RW, "t", 1, "k", {0}, SAT + HM(3, 59), NULL, 0, 1, "night-batch", 0, 0},
	{"batch", "service", NULL, 0, NULL, RW, "t", 1, "k", {0}, SAT + HM(4, 0), NULL, 0, 0, NULL, 0, 0},
	{"batch", "service", NULL, 0, NULL, RW, "t", 1, "k", {0}, FRI + HM(3, 0), NULL, 0, 0, NULL, 0, 0},
	{"batch", "service", NULL, 0, NULL, RW, "t", 1, "k", {0}, FRI + HM(21, 59), NULL, 0, 0, NULL, 0, 0},
	{"batch", "service", NULL, 0, NULL, RW, "t", 1, "k", {0}, SAT + HM(22, 30), NULL, 0, 0, NULL, 0, 0},
	{"batch", "service", NULL, 0, NULL, RW, "t", 1, "k", {0}, THU + HM(23, 0), NULL, 0, 0, NULL, 0, 0},
	/* source CIDRs: v4 and v6 edges, mapped v4, host entry, missing or bad source */
	{"netsvc", "service", NULL, 0, NULL, KMS_OP_KEY_READ, "t", 1, "k", {0}, NOW, "10.1.0.0", 0, 1, "net", 0, 0},
	{"netsvc", "service", NULL, 0, NULL, KMS_OP_KEY_READ, "t", 1, "k", {0}, NOW, "10.1.255.255", 0, 1, "net", 0, 0},
	{"netsvc", "service", NULL, 0, NULL, KMS_OP_KEY_READ, "t", 1, "k", {0}, NOW, "10.2.0.0", 0, 0, NULL, 0, 0},
	{"netsvc", "service", NULL, 0, NULL, KMS_OP_KEY_READ, "t", 1, "k", {0}, NOW, "10.0.255.255", 0, 0, NULL, 0, 0},
	{"netsvc", "service", NULL, 0, NULL, KMS_OP_KEY_READ, "t", 1, "k", {0}, NOW, "192.168.7.128", 0, 1, "net", 0, 0},
	{"netsvc", "service", NULL, 0, NULL, KMS_OP_KEY_READ, "t", 1, "k", {0}, NOW, "192.168.7.255", 0, 1, "net", 0, 0},
	{"netsvc", "service", NULL, 0, NULL, KMS_OP_KEY_READ, "t", 1, "k", {0}, NOW, "192.168.7.127", 0, 0, NULL, 0, 0},
	{"netsvc", "service", NULL, 0, NULL, KMS_OP_KEY_READ, "t", 1, "k", {0}, NOW, "::ffff:10.1.2.3", 0, 1, "net", 0, 0},
	{"netsvc", "service", NULL, 0, NULL, KMS_OP_KEY_READ, "t", 1, "k", {0}, NOW, "2001:db8:abcd:ffff:ffff:ffff:ffff:ffff", 0, 1, "net", 0, 0},
	{"netsvc", "service", NULL, 0, NULL, KMS_OP_KEY_READ, "t", 1, "k", {0}, NOW, "2001:db8:abcc:ffff::1", 0, 0, NULL, 0, 0},
	{"netsvc", "service", NULL, 0, NULL, KMS_OP_KEY_READ, "t", 1, "k", {0}, NOW, "2001:db8:abce::", 0, 0, NULL, 0, 0},
	{"netsvc", "service", NULL, 0, NULL, KMS_OP_KEY_READ, "t", 1, "k", {0}, NOW, "fd00::1", 0, 1, "net", 0, 0},
	{"netsvc", "service", NULL, 0, NULL, KMS_OP_KEY_READ, "t", 1, "k", {0}, NOW, "fd00::2", 0, 0, NULL, 0, 0},
	{"netsvc", "service", NULL, 0, NULL, KMS_OP_KEY_READ, "t", 1, "k", {0}, NOW, "::a01:203", 0, 0, NULL, 0, 0},
	{"netsvc", "service", NULL, 0, NULL, KMS_OP_KEY_READ, "t", 1, "k", {0}, NOW, NULL, 0, 0, NULL, 0, 0},
	{"netsvc", "service", NULL, 0, NULL, KMS_OP_KEY_READ, "t", 1, "k", {0}, NOW, "not-an-ip", 0, 0, NULL, 0, 0},
	{"netsvc", "service", NULL, 0, NULL, KMS_OP_KEY_READ, "t", 1, "k", {0}, NOW, "10.1.2.3:443", 0, 0, NULL, 0, 0},
	/* analytics: de-identified context only, on scoped tenants; explicit deny on PHI keys */
	{"analytics", "service", scope5, 1, NULL, DEC, "research", 5, "deid-1", {"deidentified", "true", "purpose", "research"}, NOW, NULL, 0, 1, "analytics-deid", 0, 0},
	{"analytics", "service", scope5, 1, NULL, DEC, "research", 5, "deid-1", {"deidentified", "false", "purpose", "research"}, NOW, NULL, 0, 0, NULL, 0, 0},
	{"analytics", "service", scope5, 1, NULL, DEC, "research", 5, "deid-1", {"deidentified", "true"}, NOW, NULL, 0, 0, NULL, 0, 0},
	{"analytics", "service", scope5, 1, NULL, DEC, "other", 6, "deid-1", {"deidentified", "true", "purpose", "research"}, NOW, NULL, 0, 0, NULL, 0, 0},
	{"analytics", "service", scope5, 1, NULL, DEC, "research", 5, "phi-1", {"deidentified", "true", "purpose", "research"}, NOW, NULL, 0, 0, "deny-analytics-phi", 0, 0},
	{"analytics", "service", scope5, 1, NULL, KMS_OP_KEY_READ, "research", 5, "phi-9", {0}, NOW, NULL, 0, 0, "deny-analytics-phi", 0, 0},
	{"analytics", "service", NULL, 0, "research", DEC, "research", 0, "deid-1", {"deidentified", "true", "purpose", "research"}, NOW, NULL, 0, 1, "analytics-deid", 0, 0},
	{"analytics", "service", NULL, 0, "research", DEC, "research", -1, "deid-1", {"deidentified", "true", "purpose", "research"}, NOW, NULL, 0, 0, NULL, 0, 0},
	{"analytics", "service", scope5, 1, NULL, DEC, "research", -1, "deid-1", {"deidentified", "true", "purpose", "research"}, NOW, NULL, 0, 0, NULL, 0, 0},
	/* admin: op wildcards, MFA output, quorum from another rule, deny wins both ways */
	{"alice", "admin", NULL, 0, NULL, KMS_OP_KEY_CREATE, "hosp-a", 1, "k1", {0}, NOW, NULL, 0, 1, "admin", 1, 0},
	{"alice", "admin", NULL, 0, NULL, KMS_OP_TENANT_CREATE, NULL, 0, NULL, {0}, NOW, NULL, 0, 1, "admin", 1, 0},
	{"alice", "admin", NULL, 0, NULL, KMS_OP_PRINCIPAL_READ, NULL, 0, NULL, {0}, NOW, NULL, 0, 1, "admin", 1, 0},
	{"alice", "admin", NULL, 0, NULL, KMS_OP_TOKEN_LOOKUP_SELF, NULL, 0, NULL, {0}, NOW, NULL, 0, 1, "admin", 1, 0},
	{"alice", "admin", NULL, 0, NULL, DEC, "hosp-a", 1, "phi-1", PURPOSE("treatment"), NOW, NULL, 0, 0, "admin-no-material", 0, 0},
	{"alice", "admin", NULL, 0, NULL, KMS_OP_KEY_ROTATE, "hosp-a", 1, "k1", {0}, NOW, NULL, 0, 1, "admin", 1, 2},
	{"alice", "admin", NULL, 0, NULL, KMS_OP_KEY_ROTATE, "clinic", 3, "k1", {0}, NOW, NULL, 0, 1, "admin", 1, 0},
	{"alice", "admin", NULL, 0, NULL, KMS_OP_KEY_ROTATE, "hosp-ab", 4, "k1", {0}, NOW, NULL, 0, 1, "admin", 1, 0},
	{"alice", "admin", NULL, 0, NULL, KMS_OP_KEY_ROTATE, "frozen", 9, "k1", {0}, NOW, NULL, 0, 0, "deny-frozen", 0, 0},
	{"alice", "admin", NULL, 0, NULL, KMS_OP_TENANT_READ, "frozen", 9, NULL, {0}, NOW, NULL, 0, 1, "admin", 1, 0},
	{"alice", "Admin", NULL, 0, NULL, KMS_OP_TENANT_CREATE, NULL, 0, NULL, {0}, NOW, NULL, 0, 0, NULL, 0, 0},
	{"admin", "service", NULL, 0, NULL, KMS_OP_TENANT_CREATE, NULL, 0, NULL, {0}, NOW, NULL, 0, 0, NULL, 0, 0},
	{"alice", NULL, NULL, 0, NULL, KMS_OP_TENANT_CREATE, NULL, 0, NULL, {0}, NOW, NULL, 0, 0, NULL, 0, 0},
	/* MFA freshness as a condition */
	{"oncall-1", "service", NULL, 0, NULL, KMS_OP_TOKEN_CREATE, NULL, 0, NULL, {0}, NOW, NULL, NOW - 300, 1, "fresh-mfa-token", 0, 0},
	{"oncall-1", "service", NULL, 0, NULL, KMS_OP_TOKEN_CREATE, NULL, 0, NULL, {0}, NOW, NULL, NOW, 1, "fresh-mfa-token", 0, 0},
	{"oncall-1", "service", NULL, 0, NULL, KMS_OP_TOKEN_CREATE, NULL, 0, NULL, {0}, NOW, NULL, NOW - 301, 0, NULL, 0, 0},
	{"oncall-1", "service", NULL, 0, NULL, KMS_OP_TOKEN_CREATE, NULL, 0, NULL, {0}, NOW, NULL, 0, 0, NULL, 0, 0},
	{"oncall-1", "service", NULL, 0, NULL, KMS_OP_TOKEN_CREATE, NULL, 0, NULL, {0}, NOW, NULL, NOW + 10, 0, NULL, 0, 0},
	{"oncall-1", "service", NULL, 0, NULL, KMS_OP_TOKEN_REVOKE, NULL, 0, NULL, {0}, NOW, NULL, NOW, 0, NULL, 0, 0},
	/* break-glass: fresh MFA, then step-up and one approval as outputs */
	{"breakglass", "service", NULL, 0, NULL, DEC, "hosp-a", 1, "phi-1", {0}, NOW, NULL, NOW - 60, 1, "breakglass", 1, 1},
	{"breakglass", "service", NULL, 0, NULL, DEC, "hosp-a", 1, "phi-1", {0}, NOW, NULL, NOW - 601, 0, NULL, 0, 0},
	{"breakglass", "service", NULL, 0, NULL, DEC, "hosp-a", 1, "phi-1", {0}, NOW, "203.0.113.66", NOW - 60, 0, "deny-blocked-host", 0, 0},
	{"breakglass", "service", NULL, 0, NULL, ENC, "hosp-a", 1, "phi-1", {0}, NOW, NULL, NOW - 60, 0, NULL, 0, 0},
	/* blocked host denies an otherwise good request */
	{"ehr-svc", "service", NULL, 0, NULL, DK, "hosp-a", 1, "phi-1", PURPOSE("treatment"), NOW, "203.0.113.66", 0, 0, "deny-blocked-host", 0, 0},
	{"ehr-svc", "service", NULL, 0, NULL, DK, "hosp-a", 1, "phi-1", PURPOSE("treatment"), NOW, "::ffff:203.0.113.66", 0, 0, "deny-blocked-host", 0, 0},
	/* service scope by id */
	{"svc", "service", scope1, 1, NULL, KMS_OP_KEY_LIST, "t1", 1, NULL, {0}, NOW, NULL, 0, 1, "svc-read", 0, 0},
	{"svc", "service", scope1, 1, NULL, KMS_OP_KEY_LIST, "t2", 2, NULL, {0}, NOW, NULL, 0, 0, NULL, 0, 0},
	{"svc", "service", scope1, 1, NULL, KMS_OP_KEY_LIST, NULL, 0, NULL, {0}, NOW, NULL, 0, 0, NULL, 0, 0},
	{"svc", "service", scope1, 1, NULL, KMS_OP_KEY_CREATE, "t1", 1, "k", {0}, NOW, NULL, 0, 0, NULL, 0, 0},
	/* default deny, invalid operations */
	{"nobody", "service", NULL, 0, NULL, KMS_OP_KEY_READ, "t", 1, "k", {0}, NOW, NULL, 0, 0, NULL, 0, 0},
	{NULL, NULL, NULL, 0, NULL, KMS_OP_KEY_READ, "t", 1, "k", {0}, NOW, NULL, 0, 0, NULL, 0, 0},
	{"alice", "admin", NULL, 0, NULL, KMS_OP_NONE, NULL, 0, NULL, {0}, NOW, NULL, 0, 0, NULL, 0, 0},
	{"alice", "admin", NULL, 0, NULL, (enum kms_op)999, NULL, 0, NULL, {0}, NOW, NULL, 0, 0, NULL, 0, 0},
	{"alice", "admin", NULL, 0, NULL, KMS_OP__COUNT, NULL, 0, NULL, {0}, NOW, NULL, 0, 0, NULL, 0, 0},
};

static struct policy_doc *load(const char *text)
{
	struct policy_doc *doc = NULL;
	struct policy_doc_error e;
	kms_err rc = policy_doc_parse(text, strlen(text), &doc, &e);

	if (rc != KMS_OK)
		fail_msg("test policy refused: line %u column %u at %s: %s", e.line, e.column, e.path, e.reason);
	return doc;
}

static void run_case(const struct policy_doc *doc, const struct tcase *c, size_t i)
{
	struct policy_kv kv[3];
	size_t n = 0;
	const char *names[1] = {c->scope_name};
	struct policy_input in = {0};
	struct policy_verdict v;
	const char *rule;

	while (n < 3 && c->ctx[2 * n] != NULL) {
		kv[n].key = c->ctx[2 * n];
		kv[n].value = c->ctx[2 * n + 1];
		n++;
	}
	in.principal = c->principal;
	in.role = c->role;
	in.scope_ids = c->scope;
	in.n_scope_ids = c->n_scope;
	in.scope_names = c->scope_name ? names : NULL;
	in.n_scope_names = c->scope_name ? 1 : 0;
	in.op = c->op;
	in.tenant = c->tenant;
	in.tenant_id = c->tenant_id;
	in.key = c->key;
	in.context = kv;
	in.n_context = n;
	in.now = c->now;
	in.mfa_at = c->mfa_at;
	if (c->src != NULL)
		(void)policy_addr_from_text(c->src, &in.source);
	policy_eval(doc, &in, &v);
	rule = v.rule >= 0 ? policy_doc_rule_name(doc, (size_t)v.rule) : NULL;
	if (v.allow != (c->allow != 0) || (rule == NULL) != (c->rule == NULL) ||
	    (rule != NULL && strcmp(rule, c->rule) != 0) || v.require_mfa != (c->mfa != 0) ||
	    v.require_quorum != c->quorum)
		fail_msg("case %zu (%s %s %s/%s): expected %s by %s mfa=%d quorum=%u, got %s by %s mfa=%d quorum=%u: %s",
			 i, c->principal ? c->principal : "-", kms_op_name(c->op), c->tenant ? c->tenant : "-",
			 c->key ? c->key : "-", c->allow ? "allow" : "deny", c->rule ? c->rule : "-", c->mfa,
			 c->quorum, v.allow ? "allow" : "deny", rule ? rule : "-", v.require_mfa, v.require_quorum,
			 v.reason);
	assert_true(v.reason[0] != '\0');
	if (rule != NULL)
		assert_non_null(strstr(v.reason, rule));
}

static void test_eval_table(void **state)
{
	struct policy_doc *doc = load(test_doc);
	(void)state;

	assert_true(sizeof(cases) / sizeof(cases[0]) >= 60);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		run_case(doc, &cases[i], i);
	print_message("[          ] %zu evaluator cases\n", sizeof(cases) / sizeof(cases[0]));
	policy_doc_free(doc);
}

static void test_reasons(void **state)
{
	struct policy_doc *doc = load(test_doc);
	struct policy_input in = {0};
	struct policy_verdict v;
	(void)state;

	/* default deny names the policy version */
	in.principal = "nobody";
	in.op = KMS_OP_KEY_READ;
	in.now = NOW;
	policy_eval(doc, &in, &v);
	assert_false(v.allow);
	assert_int_equal(v.rule, -1);
	assert_string_equal(v.reason, "policy v7: default deny (no rule matched)");

	/* the deciding rule, with its index, and the rule that imposed the quorum */
	in.principal = "alice";
	in.role = "admin";
	in.op = KMS_OP_KEY_ROTATE;
	in.tenant = "hosp-a";
	in.tenant_id = 1;
	in.key = "k";
	policy_eval(doc, &in, &v);
	assert_true(v.allow);
	assert_string_equal(policy_doc_rule_name(doc, (size_t)v.rule), "admin");
	assert_string_equal(policy_doc_rule_name(doc, (size_t)v.quorum_rule), "rotate-quorum");
	assert_int_equal(v.mfa_rule, v.rule);
	assert_non_null(strstr(v.reason, "policy v7 rules[7] \"admin\": allow"));
	assert_non_null(strstr(v.reason, "quorum 2 from rules[10]"));

	in.op = KMS_OP_KEY_CREATE;
	policy_eval(doc, &in, &v);
	assert_string_equal(v.reason, "policy v7 rules[7] \"admin\": allow");

	in.op = KMS_OP_DECRYPT;
	policy_eval(doc, &in, &v);
	assert_string_equal(v.reason, "policy v7 rules[8] \"admin-no-material\": deny");

	in.op = KMS_OP_NONE;
	policy_eval(doc, &in, &v);
	assert_false(v.allow);
	assert_non_null(strstr(v.reason, "invalid request"));

	policy_eval(NULL, &in, &v);
	assert_false(v.allow);
	policy_eval(doc, NULL, &v);
	assert_false(v.allow);
	policy_doc_free(doc);
}

static void test_glob(void **state)
{
	(void)state;
	assert_true(policy_glob_match("*", ""));
	assert_true(policy_glob_match("*", "abc"));
	assert_true(policy_glob_match("a*", "a"));
	assert_true(policy_glob_match("a*c", "abbbc"));
	assert_true(policy_glob_match("a*b*c", "aXbYbZc"));
	assert_true(policy_glob_match("?b?", "abc"));
	assert_true(policy_glob_match("hosp-*-phi", "hosp-a-b-phi"));
	assert_false(policy_glob_match("a*c", "abcd"));
	assert_false(policy_glob_match("?", ""));
	assert_false(policy_glob_match("abc", "ab"));
	assert_false(policy_glob_match("ab", "abc"));
	assert_false(policy_glob_match("a", "A"));
	assert_false(policy_glob_match(NULL, "a"));
	assert_false(policy_glob_match("a", NULL));
}

static void test_addr(void **state)
{
	struct policy_addr a;
	struct sockaddr_in s4 = {0};
	struct sockaddr_in6 s6 = {0};
	(void)state;

	assert_int_equal(policy_addr_from_text("10.1.2.3", &a), 0);
	assert_int_equal(a.family, 4);
	assert_int_equal(a.a[3], 3);
	assert_int_equal(policy_addr_from_text("::ffff:10.1.2.3", &a), 0);
	assert_int_equal(a.family, 4);
	assert_int_equal(a.a[0], 10);
	assert_int_equal(policy_addr_from_text("2001:db8::1", &a), 0);
	assert_int_equal(a.family, 6);
	assert_int_equal(policy_addr_from_text("[2001:db8::1]", &a), -1);
	assert_int_equal(a.family, 0);
	assert_int_equal(policy_addr_from_text("010.1.2.3", &a), -1);
	assert_int_equal(policy_addr_from_text("", &a), -1);
	assert_int_equal(policy_addr_from_text(NULL, &a), -1);

	s4.sin_family = AF_INET;
	s4.sin_addr.s_addr = htonl(0xC0A80701);
	assert_int_equal(policy_addr_from_sockaddr((struct sockaddr *)&s4, &a), 0);
	assert_int_equal(a.family, 4);
	assert_int_equal(a.a[0], 192);
	assert_int_equal(a.a[3], 1);
	s6.sin6_family = AF_INET6;
	assert_int_equal(inet_pton(AF_INET6, "::ffff:192.168.7.1", &s6.sin6_addr), 1);
	assert_int_equal(policy_addr_from_sockaddr((struct sockaddr *)&s6, &a), 0);
	assert_int_equal(a.family, 4);
	assert_int_equal(a.a[3], 1);
	assert_int_equal(inet_pton(AF_INET6, "fd00::7", &s6.sin6_addr), 1);
	assert_int_equal(policy_addr_from_sockaddr((struct sockaddr *)&s6, &a), 0);
	assert_int_equal(a.family, 6);
	assert_int_equal(a.a[15], 7);
	s4.sin_family = AF_UNIX;
	assert_int_equal(policy_addr_from_sockaddr((struct sockaddr *)&s4, &a), -1);
}

/* The same table as tests/unit/test_policy.c, against the built-in document. */
static const int64_t scope_a[] = {1};
static const int64_t scope_ab[] = {1, 2};

static const struct {
	enum policy_role role;
	const int64_t *scope;
	size_t n;
	enum kms_op op;
	int64_t tenant;
	int allow;
} old_cases[] = {
	{POLICY_ROLE_NONE, NULL, 0, KMS_OP_HEALTH, 0, 1},
	{POLICY_ROLE_NONE, NULL, 0, KMS_OP_DATAKEY, 1, 0},
	{POLICY_ROLE_NONE, NULL, 0, KMS_OP_TOKEN_LOOKUP_SELF, 0, 0},
	{POLICY_ROLE_NONE, NULL, 0, KMS_OP_NONE, 0, 0},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_TENANT_CREATE, 0, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_TENANT_LIST, 0, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_PRINCIPAL_CREATE, 0, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_TOKEN_CREATE, 0, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_TOKEN_REVOKE, 0, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_KEY_CREATE, 7, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_KEY_ROTATE, 7, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_KEY_READ, -1, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_TOKEN_LOOKUP_SELF, 0, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_DATAKEY, 7, 0},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_ENCRYPT, 7, 0},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_DECRYPT, 7, 0},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_REWRAP, 7, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_DATAKEY, 1, 1},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_ENCRYPT, 1, 1},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_DECRYPT, 1, 1},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_REWRAP, 1, 1},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_KEY_READ, 1, 1},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_KEY_LIST, 1, 1},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_DATAKEY, 2, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_DECRYPT, 2, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_DATAKEY, -1, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_DATAKEY, 0, 0},
	{POLICY_ROLE_SERVICE, scope_ab, 2, KMS_OP_DATAKEY, 2, 1},
	{POLICY_ROLE_SERVICE, scope_ab, 2, KMS_OP_DECRYPT, 3, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_KEY_CREATE, 1, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_KEY_ROTATE, 1, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_TENANT_CREATE, 0, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_TENANT_LIST, 0, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_PRINCIPAL_CREATE, 0, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_TOKEN_CREATE, 0, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_TOKEN_REVOKE, 0, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_TOKEN_LOOKUP_SELF, 0, 1},
	{POLICY_ROLE_SERVICE, NULL, 0, KMS_OP_DATAKEY, 1, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, (enum kms_op)999, 1, 0},
	/* auditor: reads what an audit needs on every tenant; never a change, never key material */
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_AUDIT_HASH, 0, 1},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_METRICS, 0, 1},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_KEY_READ, 7, 1},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_KEY_READ, -1, 1},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_KEY_LIST, 7, 1},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_KEY_HISTORY, 7, 1},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_TENANT_READ, 0, 1},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_TENANT_LIST, 0, 1},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_VERSION_RECEIPT, 7, 1},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_POLICY_READ, 0, 1},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_TOKEN_LOOKUP_SELF, 0, 1},
	{POLICY_ROLE_AUDITOR, scope_a, 1, KMS_OP_KEY_READ, 2, 1},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_HEALTH, 0, 1},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_DATAKEY, 7, 0},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_ENCRYPT, 7, 0},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_DECRYPT, 7, 0},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_REWRAP, 7, 0},
	{POLICY_ROLE_AUDITOR, scope_a, 1, KMS_OP_DATAKEY, 1, 0},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_KEY_CREATE, 7, 0},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_KEY_ROTATE, 7, 0},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_KEY_CONFIG, 7, 0},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_KEY_REVOKE, 7, 0},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_KEY_TRIM, 7, 0},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_KEY_LEGAL_HOLD, 7, 0},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_VERSION_SCHEDULE_DESTROY, 7, 0},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_TENANT_CREATE, 0, 0},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_TENANT_CONFIG, 0, 0},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_PRINCIPAL_CREATE, 0, 0},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_PRINCIPAL_READ, 0, 0},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_TOKEN_CREATE, 0, 0},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_TOKEN_REVOKE, 0, 0},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_TOKEN_LOOKUP_ACCESSOR, 0, 0},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_POLICY_WRITE, 0, 0},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_PRINCIPAL_CERT_ADD, 0, 0},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_PRINCIPAL_CERT_LIST, 0, 0},
	{POLICY_ROLE_AUDITOR, NULL, 0, KMS_OP_PRINCIPAL_CERT_REVOKE, 0, 0},
	/* the certificate mappings are admin business */
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_PRINCIPAL_CERT_ADD, 0, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_PRINCIPAL_CERT_LIST, 0, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_PRINCIPAL_CERT_REVOKE, 0, 1},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_PRINCIPAL_CERT_ADD, 0, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_PRINCIPAL_CERT_LIST, 0, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_AUDIT_HASH, 0, 0},
};

/* The operations that change state (and the backup, which exports the store): the
 * built-in document requires an MFA step-up on
 * each when an admin performs it, and on nothing else (reads, enrolling oneself, the data
 * plane). */
static int admin_mutating(enum kms_op op)
{
	switch (op) {
	case KMS_OP_TENANT_CREATE: case KMS_OP_TENANT_CONFIG: case KMS_OP_PRINCIPAL_CREATE:
	case KMS_OP_TOKEN_CREATE: case KMS_OP_TOKEN_REVOKE: case KMS_OP_KEY_CREATE:
	case KMS_OP_KEY_ROTATE: case KMS_OP_KEY_CONFIG: case KMS_OP_KEY_REVOKE:
	case KMS_OP_KEY_RESTORE: case KMS_OP_VERSION_DISABLE: case KMS_OP_VERSION_ENABLE:
	case KMS_OP_VERSION_SCHEDULE_DESTROY: case KMS_OP_VERSION_CANCEL_DESTROY:
	case KMS_OP_VERSION_DESTROY: case KMS_OP_KEY_LEGAL_HOLD: case KMS_OP_KEY_TRIM:
	case KMS_OP_POLICY_WRITE: case KMS_OP_MASTER_KEY_ROTATE: case KMS_OP_MFA_VERIFY:
	case KMS_OP_MFA_UNLOCK: case KMS_OP_MFA_RESET: case KMS_OP_APPROVAL_APPROVE:
	case KMS_OP_APPROVAL_DENY: case KMS_OP_BREAKGLASS_REVIEW: case KMS_OP_PRINCIPAL_CERT_ADD:
	case KMS_OP_PRINCIPAL_CERT_REVOKE: case KMS_OP_SYS_BACKUP: case KMS_OP_SYS_RESTORE:
	case KMS_OP_KEY_CONFIG_LOWER_MIN_DEC: case KMS_OP_KEY_LEGAL_HOLD_RELEASE:
	case KMS_OP_TENANT_LEGAL_HOLD_RELEASE:
		return 1;
	default:
		return 0;
	}
}

/* The two-person rule of the built-in document: these wait for one approval by another
 * admin (destruction, a policy change, lowering min_decryption_version, releasing a
 * legal hold); nothing else waits. Master-key rotation is a local command under the SO
 * PIN, not an API call (docs/POLICY.md). */
static unsigned admin_quorum(enum kms_op op)
{
	switch (op) {
	case KMS_OP_VERSION_SCHEDULE_DESTROY: case KMS_OP_POLICY_WRITE:
	case KMS_OP_KEY_CONFIG_LOWER_MIN_DEC: case KMS_OP_KEY_LEGAL_HOLD_RELEASE:
	case KMS_OP_TENANT_LEGAL_HOLD_RELEASE:
		return 1;
	default:
		return 0;
	}
}

/* How the core would fill the new input from today's subject and request. */
static void old_to_input(enum policy_role role, const char *unknown_role, const int64_t *scope, size_t n,
			 enum kms_op op, int64_t tenant, char *tname, size_t tcap, struct policy_input *in)
{
	memset(in, 0, sizeof(*in));
	in->principal = role == POLICY_ROLE_NONE && unknown_role == NULL ? NULL : "p";
	in->role = role == POLICY_ROLE_NONE ? unknown_role : policy_role_name(role);
	in->scope_ids = scope;
	in->n_scope_ids = n;
	in->op = op;
	in->tenant_id = tenant;
	if (tenant > 0)
		snprintf(tname, tcap, "t%lld", (long long)tenant);
	else
		snprintf(tname, tcap, "ghost");
	in->tenant = tenant != 0 ? tname : NULL;
	in->now = NOW;
	in->mfa_at = NOW - 60; /* a fresh TOTP session: the auditor's reads need one */
}

/* The built-in document's step-ups: every admin change, and an auditor's verify (which
 * starts its session). */
static int builtin_mfa(enum policy_role r, enum kms_op op)
{
	return (r == POLICY_ROLE_ADMIN && admin_mutating(op)) || (r == POLICY_ROLE_AUDITOR && op == KMS_OP_MFA_VERIFY);
}

static void test_default_matches_policy_decide(void **state)
{
	struct policy_doc *doc = NULL;
	struct policy_input in;
	struct policy_verdict v;
	char tname[32];
	(void)state;

	assert_int_equal(policy_doc_default(&doc), KMS_OK);
	assert_int_equal(policy_doc_version(doc), 1);
	assert_int_equal(policy_doc_rule_count(doc), 12);
	for (size_t i = 0; i < sizeof(old_cases) / sizeof(old_cases[0]); i++) {
		old_to_input(old_cases[i].role, NULL, old_cases[i].scope, old_cases[i].n, old_cases[i].op,
			     old_cases[i].tenant, tname, sizeof(tname), &in);
		policy_eval(doc, &in, &v);
		if (v.allow != (old_cases[i].allow != 0))
			fail_msg("old case %zu: %s on %lld: expected %s, got %s (%s)", i, kms_op_name(old_cases[i].op),
				 (long long)old_cases[i].tenant, old_cases[i].allow ? "allow" : "deny",
				 v.allow ? "allow" : "deny", v.reason);
		if (v.require_mfa != (v.allow && builtin_mfa(old_cases[i].role, old_cases[i].op)))
			fail_msg("old case %zu: %s: require_mfa %d", i, kms_op_name(old_cases[i].op), v.require_mfa);
		if (v.require_quorum != (v.allow && old_cases[i].role == POLICY_ROLE_ADMIN ? admin_quorum(old_cases[i].op) : 0))
			fail_msg("old case %zu: %s: require_quorum %u", i, kms_op_name(old_cases[i].op), v.require_quorum);
	}

	/* and exhaustively: every role (plus an unknown role string and anonymous), scope,
	 * tenant and operation gives the same answer as policy_decide */
	static const int64_t *scopes[] = {NULL, scope_a, scope_ab};
	static const size_t nscopes[] = {0, 1, 2};
	static const int64_t tenants[] = {-1, 0, 1, 2, 3};
	static const char *const unknown[] = {NULL, "root"};
	size_t compared = 0, quorum_ops = 0;
	for (int r = POLICY_ROLE_NONE; r <= POLICY_ROLE_AUDITOR; r++)
		for (size_t u = 0; u < (r == POLICY_ROLE_NONE ? 2u : 1u); u++)
			for (size_t s = 0; s < 3; s++)
				for (size_t t = 0; t < 5; t++)
					for (int op = 0; op <= KMS_OP__COUNT; op++) {
						struct policy_subject who = {(enum policy_role)r, scopes[s], nscopes[s]};
						struct policy_request req = {(enum kms_op)op, tenants[t]};
						struct policy_decision d = policy_decide(&who, &req);
						old_to_input((enum policy_role)r, unknown[u], scopes[s], nscopes[s],
							     (enum kms_op)op, tenants[t], tname, sizeof(tname), &in);
						policy_eval(doc, &in, &v);
						if (v.allow != d.allow)
							fail_msg("role %d/%s scope %zu tenant %lld op %s: decide %s (%s), eval %s (%s)",
								 r, unknown[u] ? unknown[u] : "-", s, (long long)tenants[t],
								 kms_op_name((enum kms_op)op), d.allow ? "allow" : "deny",
								 d.reason, v.allow ? "allow" : "deny", v.reason);
						if (v.require_mfa != (v.allow && builtin_mfa((enum policy_role)r, (enum kms_op)op)))
							fail_msg("role %d op %s: require_mfa %d (%s)", r,
								 kms_op_name((enum kms_op)op), v.require_mfa, v.reason);
						if (v.require_quorum != (v.allow && r == POLICY_ROLE_ADMIN
									 ? admin_quorum((enum kms_op)op)
									 : 0u))
							fail_msg("role %d op %s: quorum %u (%s)", r,
								 kms_op_name((enum kms_op)op), v.require_quorum, v.reason);
						if (v.require_quorum > 0)
							quorum_ops++;
						compared++;
					}
	/* each quorum operation, for an admin, on every scope and tenant */
	assert_int_equal(quorum_ops, 5 * 3 * 5);
	print_message("[          ] default document == policy_decide on %zu inputs\n", compared);
	policy_doc_free(doc);
}

/* The built-in auditor: its own MFA without a session; every audit read only within 8 h
 * (28800 s) of a TOTP check, never before one, never with a check in the future; and the
 * session decides nothing for other roles. */
static void test_builtin_auditor_session(void **state)
{
	struct policy_doc *doc = NULL;
	struct policy_input in;
	struct policy_verdict v;
	char tname[32];
	size_t reads = 0;
	(void)state;

	assert_int_equal(policy_doc_default(&doc), KMS_OK);
	for (int op = 1; op < KMS_OP__COUNT; op++) {
		static const int64_t ages[] = {0, 1, 28800, 28801, -5};
		struct policy_decision d;
		struct policy_subject who = {POLICY_ROLE_AUDITOR, NULL, 0};
		struct policy_request req = {(enum kms_op)op, 7};
		d = policy_decide(&who, &req);
		for (size_t a = 0; a < sizeof(ages) / sizeof(ages[0]); a++) {
			bool fresh = ages[a] > 0 && ages[a] <= 28800;
			bool own_mfa = op == KMS_OP_MFA_ENROLL || op == KMS_OP_MFA_CONFIRM || op == KMS_OP_MFA_STATUS ||
				       op == KMS_OP_MFA_VERIFY;
			bool always = own_mfa || op == KMS_OP_HEALTH || op == KMS_OP_TOKEN_LOOKUP_SELF;
			old_to_input(POLICY_ROLE_AUDITOR, NULL, NULL, 0, (enum kms_op)op, 7, tname, sizeof(tname), &in);
			in.mfa_at = ages[a] == 0 ? 0 : NOW - ages[a];
			policy_eval(doc, &in, &v);
			if (v.allow != (d.allow && (always || fresh)))
				fail_msg("auditor %s, session age %lld: %s (%s)", kms_op_name((enum kms_op)op),
					 (long long)ages[a], v.allow ? "allow" : "deny", v.reason);
			if (v.allow && !always)
				assert_non_null(strstr(v.reason, "auditor-read"));
			if (d.allow && !always && a == 0)
				reads++;
			/* whether kmsd must look the session up */
			assert_int_equal(policy_mfa_age_may_apply(doc, &in), d.allow && !always);
		}
	}
	assert_int_equal(reads, 13); /* the auditor-read operations */
	/* a service's data plane and an admin's change never need the session looked up */
	old_to_input(POLICY_ROLE_SERVICE, NULL, scope_a, 1, KMS_OP_DATAKEY, 1, tname, sizeof(tname), &in);
	assert_false(policy_mfa_age_may_apply(doc, &in));
	old_to_input(POLICY_ROLE_ADMIN, NULL, NULL, 0, KMS_OP_KEY_READ, 1, tname, sizeof(tname), &in);
	assert_false(policy_mfa_age_may_apply(doc, &in));
	policy_doc_free(doc);
}

/* A refined operation (kms/core/policy_op.c) is covered by a rule naming its route's
 * operation; a rule naming the refinement covers only it. */
static void test_refined_ops(void **state)
{
	static const char doc_text[] =
		"{\"version\": 3, \"rules\": [\n"
		" {\"name\": \"config\", \"effect\": \"allow\", \"principals\": [\"role:admin\"],\n"
		"  \"operations\": [\"key.config\", \"key.legal_hold\", \"tenant.config\"]},\n"
		" {\"name\": \"two\", \"effect\": \"allow\", \"principals\": [\"role:admin\"],\n"
		"  \"operations\": [\"key.config.lower_min_decryption\", \"key.legal_hold.release\",\n"
		"                 \"tenant.config.legal_hold_release\"], \"require_quorum\": 2},\n"
		" {\"name\": \"ops\", \"effect\": \"allow\", \"principals\": [\"ops\"],\n"
		"  \"operations\": [\"key.config.lower_min_decryption\"]}\n"
		"]}\n";
	static const struct {
		const char *principal, *role;
		enum kms_op op;
		int allow;
		unsigned quorum;
	} t[] = {
		{"a", "admin", KMS_OP_KEY_CONFIG, 1, 0},
		{"a", "admin", KMS_OP_KEY_CONFIG_LOWER_MIN_DEC, 1, 2},
		{"a", "admin", KMS_OP_KEY_LEGAL_HOLD, 1, 0},
		{"a", "admin", KMS_OP_KEY_LEGAL_HOLD_RELEASE, 1, 2},
		{"a", "admin", KMS_OP_TENANT_CONFIG, 1, 0},
		{"a", "admin", KMS_OP_TENANT_LEGAL_HOLD_RELEASE, 1, 2},
		{"a", "admin", KMS_OP_KEY_REVOKE, 0, 0},
		{"ops", "service", KMS_OP_KEY_CONFIG_LOWER_MIN_DEC, 1, 0},
		{"ops", "service", KMS_OP_KEY_CONFIG, 0, 0},
	};
	struct policy_doc *doc = load(doc_text);
	(void)state;

	assert_string_equal(kms_op_name(KMS_OP_KEY_CONFIG_LOWER_MIN_DEC), "key.config.lower_min_decryption");
	assert_string_equal(kms_op_name(KMS_OP_KEY_LEGAL_HOLD_RELEASE), "key.legal_hold.release");
	assert_string_equal(kms_op_name(KMS_OP_TENANT_LEGAL_HOLD_RELEASE), "tenant.config.legal_hold_release");
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct policy_input in = {0};
		struct policy_verdict v;
		in.principal = t[i].principal;
		in.role = t[i].role;
		in.op = t[i].op;
		in.tenant = "t";
		in.tenant_id = 1;
		in.key = "k";
		in.now = NOW;
		policy_eval(doc, &in, &v);
		if (v.allow != (t[i].allow != 0) || v.require_quorum != t[i].quorum)
			fail_msg("refined case %zu (%s): allow %d quorum %u (%s)", i, kms_op_name(t[i].op), v.allow,
				 v.require_quorum, v.reason);
	}
	policy_doc_free(doc);
}

static void test_refcount(void **state)
{
	struct policy_doc *doc = NULL;
	struct policy_input in = {0};
	struct policy_verdict v;
	(void)state;

	assert_int_equal(policy_doc_default(&doc), KMS_OK);
	assert_ptr_equal(policy_doc_ref(doc), doc);
	policy_doc_free(doc); /* one reference left */
	in.op = KMS_OP_HEALTH;
	policy_eval(doc, &in, &v);
	assert_true(v.allow);
	policy_doc_free(doc);
	policy_doc_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_eval_table),
		cmocka_unit_test(test_reasons),
		cmocka_unit_test(test_glob),
		cmocka_unit_test(test_addr),
		cmocka_unit_test(test_default_matches_policy_decide),
		cmocka_unit_test(test_refined_ops),
		cmocka_unit_test(test_builtin_auditor_session),
		cmocka_unit_test(test_refcount),
	};
	return cmocka_run_group_tests_name("policy_eval", tests, NULL, NULL);
}
