/* Quorum (M-of-N) approvals (docs/API.md "Approvals"). When the policy's verdict for a
 * request says require_quorum M, the request does not run: it is stored whole (method,
 * path, tenant, key, canonical JSON body) as a pending approval request and the caller
 * gets 202 with its id. Other principals approve or deny it through the approval.*
 * operations (themselves subject to the policy). The approval that completes the quorum
 * moves the request to "executing" in the same store transaction, with a compare-and-set
 * on its state, so that it runs exactly once; it runs through core_call as its
 * requester (policy evaluated again, at that time), audited with its approvers, and its
 * answer is stored for the requester and returned to the final approver.
 *
 * Only admin operations can wait for approvals: a data-plane call (its answer holds key
 * material) or a token creation (its answer is a secret) is refused instead, so that no
 * plaintext key, DEK or token is ever stored with a request or handed to an approver. */
#include <errno.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kms/audit/audit.h"
#include "kms/base/b64.h"
#include "kms/base/json.h"
#include "kms/base/log.h"
#include "kms/core/core_int.h"

#define APPROVAL_LIST_MAX 1000
#define DEFAULT_APPROVAL_TTL 86400

/* Operations that may wait for approvals: admin changes whose answers carry no secret. */
static bool op_deferrable(enum kms_op op)
{
	switch (op) {
	case KMS_OP_TENANT_CREATE: case KMS_OP_TENANT_CONFIG: case KMS_OP_PRINCIPAL_CREATE:
	case KMS_OP_TOKEN_REVOKE: case KMS_OP_KEY_CREATE: case KMS_OP_KEY_ROTATE: case KMS_OP_KEY_CONFIG:
	case KMS_OP_KEY_REVOKE: case KMS_OP_KEY_RESTORE: case KMS_OP_VERSION_DISABLE: case KMS_OP_VERSION_ENABLE:
	case KMS_OP_VERSION_SCHEDULE_DESTROY: case KMS_OP_VERSION_CANCEL_DESTROY: case KMS_OP_KEY_LEGAL_HOLD:
	case KMS_OP_KEY_TRIM: case KMS_OP_POLICY_WRITE:
		return true;
	default:
		return false;
	}
}

static enum kms_op op_by_name(const char *name)
{
	for (int op = 1; op < KMS_OP__COUNT; op++)
		if (strcmp(kms_op_name((enum kms_op)op), name) == 0)
			return (enum kms_op)op;
	return KMS_OP_NONE;
}

static kms_err new_id(char out[STORE_APPROVAL_ID_LEN + 1])
{
	uint8_t r[STORE_APPROVAL_ID_LEN / 2];

	if (RAND_bytes(r, sizeof(r)) != 1)
		return kms_errf(KMS_ERR_INTERNAL, "no random bytes for an id");
	kms_hex_encode(r, sizeof(r), out);
	return KMS_OK;
}

static bool valid_id(const char *s)
{
	size_t n = 0;

	if (s == NULL)
		return false;
	for (; s[n]; n++)
		if (n >= STORE_APPROVAL_ID_LEN || !((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f')))
			return false;
	return n == STORE_APPROVAL_ID_LEN;
}

/* json_dumps allocates through jansson's (wiping) allocator; the store and this file
 * free() what they hold, so keep a plain copy. */
static char *dump(const json_t *j)
{
	char *t = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII) : NULL;
	char *copy = t ? strdup(t) : NULL;

	kms_json_free_str(t, 0);
	return copy;
}

static json_t *str_or_null(const char *s)
{
	return s != NULL && *s != '\0' ? kms_json_text(s) : json_null();
}

void core_audit_event(struct core *c, const char *operation, const char *principal, const char *tenant,
		      const char *key, const char *outcome, int status, const char *reason, json_t *extra)
{
	struct audit_record ar = {0};
	kms_err rc;

	ar.principal = principal;
	ar.auth_method = "internal";
	ar.operation = operation;
	ar.tenant = tenant != NULL && *tenant ? tenant : NULL;
	ar.key = key != NULL && *key ? key : NULL;
	ar.outcome = outcome;
	ar.status = status;
	ar.reason = reason;
	ar.extra = extra;
	rc = audit_append(c->au, &ar);
	if (rc != KMS_OK)
		kms_error("audit record for %s failed: %s", operation, kms_err_detail(rc));
}

kms_err core_approval_identity(struct core *c, struct op_ctx *x)
{
	const struct core_approved *ap = x->call->approved;
	kms_err rc;

	rc = store_principal_get_id(c->st, ap->requester_id, &x->who);
	if (rc == KMS_ERR_NOT_FOUND)
		return kms_errf(KMS_ERR_DENIED, "permission denied");
	if (rc != KMS_OK)
		return rc;
	x->role = policy_role_parse(x->who.role);
	if (x->role == POLICY_ROLE_SERVICE)
		return store_principal_tenants(c->st, x->who.id, &x->scope, &x->n_scope);
	return KMS_OK;
}

/* The request as stored: what core_call needs to run it again, nothing secret. */
static json_t *request_json(const struct core_call *call)
{
	json_t *r = json_object();

	if (r == NULL)
		return NULL;
	json_object_set_new(r, "operation", json_string(kms_op_name(call->op)));
	json_object_set_new(r, "method", str_or_null(call->method));
	json_object_set_new(r, "path", str_or_null(call->path));
	json_object_set_new(r, "tenant", str_or_null(call->tenant));
	json_object_set_new(r, "key", str_or_null(call->key));
	json_object_set_new(r, "name", str_or_null(call->name));
	json_object_set_new(r, "variant", str_or_null(call->variant));
	json_object_set_new(r, "version", str_or_null(call->version));
	json_object_set_new(r, "remote_addr", str_or_null(call->remote_addr));
	json_object_set_new(r, "body", call->body != NULL ? json_deep_copy(call->body) : json_null());
	return r;
}

static json_t *approval_json(const struct store_approval *a, const struct store_vote *v, size_t nv, int64_t now)
{
	json_t *o = json_object(), *ap = json_array(), *dn = json_array(), *req;
	unsigned n_ok = 0;

	for (size_t i = 0; i < nv; i++) {
		json_t *e = json_pack("{s:o,s:I}", "principal", kms_json_text(v[i].principal), "time",
				      (json_int_t)v[i].time);
		if (strcmp(v[i].verdict, "approve") == 0) {
			json_array_append_new(ap, e);
			n_ok++;
		} else {
			json_array_append_new(dn, e);
		}
	}
	json_object_set_new(o, "id", json_string(a->id));
	json_object_set_new(o, "state",
			    json_string(strcmp(a->state, "pending") == 0 && a->expires <= now ? "expired" : a->state));
	json_object_set_new(o, "requester", kms_json_text(a->requester));
	json_object_set_new(o, "operation", json_string(a->operation));
	json_object_set_new(o, "tenant", str_or_null(a->tenant));
	json_object_set_new(o, "key", str_or_null(a->key));
	json_object_set_new(o, "version", str_or_null(a->version));
	json_object_set_new(o, "required_approvals", json_integer(a->required));
	json_object_set_new(o, "approvals", json_integer(n_ok));
	json_object_set_new(o, "approved_by", ap);
	json_object_set_new(o, "denied_by", dn);
	json_object_set_new(o, "created", json_integer(a->created));
	json_object_set_new(o, "expires", json_integer(a->expires));
	if (a->finished)
		json_object_set_new(o, "finished", json_integer(a->finished));
	if (a->request != NULL && (req = json_loads(a->request, JSON_REJECT_DUPLICATES, NULL)) != NULL)
		json_object_set_new(o, "request", req);
	if (a->result != NULL && (req = json_loads(a->result, JSON_REJECT_DUPLICATES, NULL)) != NULL)
		json_object_set_new(o, "result", req);
	return o;
}

kms_err core_quorum_gate(struct core *c, struct op_ctx *x, const struct policy_verdict *v)
{
	const struct core_call *call = x->call;
	struct store_approval a = {0};
	int64_t ttl = c->opt.approval_ttl > 0 ? c->opt.approval_ttl : DEFAULT_APPROVAL_TTL;
	json_t *req = NULL;
	kms_err rc;

	if (call->approved != NULL) {
		/* policy evaluated again at execution: it may ask for more than there are */
		if (call->approved->count >= v->require_quorum)
			return KMS_OK;
		return kms_errf(KMS_ERR_DENIED, "the policy now requires %u approvals for %s; the request has %u",
				v->require_quorum, kms_op_name(call->op), call->approved->count);
	}
	if (!op_deferrable(call->op))
		return kms_errf(KMS_ERR_DENIED,
				"the policy requires %u approvals for %s, which cannot wait for approvals "
				"(data-plane, secret-returning or read operation)",
				v->require_quorum, kms_op_name(call->op));
	if (v->require_quorum > 16)
		return kms_errf(KMS_ERR_DENIED, "the policy requires more approvals than kmsd records (16)");
	if ((rc = new_id(a.id)) != KMS_OK)
		return rc;
	req = request_json(call);
	a.request = dump(req);
	json_decref(req);
	if (a.request == NULL)
		return kms_errf(KMS_ERR_NOMEM, "approval request");
	a.requester_id = x->who.id;
	snprintf(a.requester, sizeof(a.requester), "%s", x->who.name);
	snprintf(a.operation, sizeof(a.operation), "%s", kms_op_name(call->op));
	snprintf(a.tenant, sizeof(a.tenant), "%s",
		 call->tenant ? call->tenant
			      : (call->op == KMS_OP_TENANT_CREATE || call->op == KMS_OP_TENANT_CONFIG) && call->name
				? call->name
				: "");
	snprintf(a.key, sizeof(a.key), "%s", call->key ? call->key : "");
	snprintf(a.version, sizeof(a.version), "%s", call->version && strlen(call->version) < 16 ? call->version : "");
	a.required = v->require_quorum;
	a.created = core_now();
	a.expires = a.created + ttl;
	rc = store_approval_create(c->st, &a);
	if (rc == KMS_OK) {
		x->deferred = true;
		x->status = 202;
		x->data = json_pack("{s:s,s:s,s:s,s:i,s:i,s:I,s:I}", "approval_id", a.id, "state", "pending", "operation",
				    a.operation, "required_approvals", (int)a.required, "approvals", 0, "created",
				    (json_int_t)a.created, "expires", (json_int_t)a.expires);
		x->audit_more = json_pack("{s:s,s:s,s:i}", "approval_id", a.id, "approval_event", "created",
					  "required_approvals", (int)a.required);
		if (x->data == NULL || x->audit_more == NULL)
			rc = kms_errf(KMS_ERR_NOMEM, "approval answer");
	}
	store_approval_clear(&a);
	return rc;
}

void core_approvals_expire(struct core *c)
{
	struct store_approval *ex = NULL;
	size_t n = 0;
	kms_err rc = store_approvals_expire(c->st, core_now(), &ex, &n);

	if (rc != KMS_OK) {
		kms_error("approvals: expiry pass: %s", kms_err_detail(rc));
		return;
	}
	for (size_t i = 0; i < n; i++) {
		json_t *e = json_pack("{s:s,s:s,s:s}", "approval_id", ex[i].id, "approval_event", "expired",
				      "requested_by", ex[i].requester);
		core_audit_event(c, "approval.expire", CORE_SCHEDULER_PRINCIPAL, ex[i].tenant, ex[i].key, "allow", 0,
				 "approval request expired before its quorum was met", e);
		json_decref(e);
	}
	free(ex);
}

kms_err op_approval_list(struct core *c, struct op_ctx *x)
{
	struct store_approval *arr = NULL;
	size_t n = 0;
	json_t *list, *ids;
	kms_err rc;

	core_approvals_expire(c);
	rc = store_approval_list(c->st, APPROVAL_LIST_MAX, &arr, &n);
	if (rc != KMS_OK)
		return rc;
	list = json_array();
	ids = json_array();
	for (size_t i = 0; i < n; i++) {
		json_t *o = approval_json(&arr[i], NULL, 0, core_now());
		json_array_append_new(ids, json_string(arr[i].id));
		json_array_append_new(list, o);
	}
	free(arr);
	x->data = json_pack("{s:o,s:o}", "keys", ids, "requests", list);
	return x->data ? KMS_OK : kms_errf(KMS_ERR_NOMEM, "approval list");
}

static kms_err load(struct core *c, const char *id, struct store_approval *a, struct store_vote **v, size_t *nv)
{
	kms_err rc;

	if (!valid_id(id))
		return kms_errf(KMS_ERR_NOT_FOUND, "approval request not found");
	rc = store_approval_get(c->st, id, a, v, nv);
	if (rc == KMS_ERR_NOT_FOUND)
		return kms_errf(KMS_ERR_NOT_FOUND, "approval request not found");
	return rc;
}

kms_err op_approval_read(struct core *c, struct op_ctx *x)
{
	struct store_approval a;
	struct store_vote *v = NULL;
	size_t nv = 0;
	kms_err rc;

	core_approvals_expire(c);
	if ((rc = load(c, x->call->name, &a, &v, &nv)) != KMS_OK)
		return rc;
	x->data = approval_json(&a, v, nv, core_now());
	store_approval_clear(&a);
	free(v);
	return x->data ? KMS_OK : kms_errf(KMS_ERR_NOMEM, "approval read");
}

/* Runs an approved request as its requester and records what it answered. */
static kms_err execute(struct core *c, struct op_ctx *x, const char *id, json_t **result)
{
	struct store_approval a;
	struct store_vote *v = NULL;
	size_t nv = 0;
	json_t *req = NULL, *approvers = NULL, *body, *res_json = NULL;
	struct core_call call = {0};
	struct core_approved ap = {0};
	struct core_result res = {0};
	char *raw = NULL, *text = NULL;
	kms_err rc;

	if ((rc = store_approval_get(c->st, id, &a, &v, &nv)) != KMS_OK)
		return rc;
	req = json_loads(a.request, JSON_REJECT_DUPLICATES, NULL);
	approvers = json_array();
	if (req == NULL || approvers == NULL) {
		rc = kms_errf(KMS_ERR_INTERNAL, "stored approval request unreadable");
		goto finish;
	}
	for (size_t i = 0; i < nv; i++)
		if (strcmp(v[i].verdict, "approve") == 0) {
			json_array_append_new(approvers, kms_json_text(v[i].principal));
			ap.count++;
		}
	ap.id = a.id;
	ap.requester_id = a.requester_id;
	ap.approvers = approvers;
	{
		const char *opname = json_string_value(json_object_get(req, "operation"));
		call.op = op_by_name(opname != NULL ? opname : "");
	}
	call.tenant = json_string_value(json_object_get(req, "tenant"));
	call.key = json_string_value(json_object_get(req, "key"));
	call.name = json_string_value(json_object_get(req, "name"));
	call.variant = json_string_value(json_object_get(req, "variant"));
	call.version = json_string_value(json_object_get(req, "version"));
	call.method = json_string_value(json_object_get(req, "method"));
	call.path = json_string_value(json_object_get(req, "path"));
	call.remote_addr = json_string_value(json_object_get(req, "remote_addr"));
	call.request_id = x->call->request_id;
	call.approved = &ap;
	body = json_object_get(req, "body");
	if (json_is_object(body)) {
		call.body = body;
		raw = dump(body);
		call.raw_body = raw;
		call.raw_len = raw ? strlen(raw) : 0;
	}
	if (call.op == KMS_OP_NONE || !op_deferrable(call.op)) {
		rc = kms_errf(KMS_ERR_INTERNAL, "stored approval request names no deferrable operation");
		goto finish;
	}
	{
		/* tests only: a window between the final vote and the run, to kill kmsd in */
		const char *delay = getenv("KMSD_TEST_APPROVAL_EXEC_DELAY_MS");
		if (delay != NULL && *delay != '\0') {
			unsigned ms = (unsigned)strtoul(delay, NULL, 10);
			kms_warn("KMSD_TEST_APPROVAL_EXEC_DELAY_MS is set: approval %s waits %u ms before it runs. "
				 "Never in production.", id, ms);
			struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
			while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
				;
		}
	}
	core_call(c, &call, &res);
	res_json = json_pack("{s:i,s:o*}", "status", res.status, "body", res.body);
	res.body = NULL;
	rc = KMS_OK;
finish:
	if (res_json == NULL) {
		res_json = json_pack("{s:i,s:[s]}", "status", 500, "errors", kms_err_detail(rc));
	}
	text = dump(res_json);
	{
		int st = res_json ? (int)json_integer_value(json_object_get(res_json, "status")) : 500;
		kms_err frc = store_approval_finish(c->st, id, st >= 200 && st < 300 ? "approved-executed" : "failed",
						    text, core_now());
		if (frc != KMS_OK)
			kms_error("approval %s: result not recorded: %s", id, kms_err_detail(frc));
	}
	free(text);
	free(raw);
	free(res.text);
	json_decref(req);
	json_decref(approvers);
	store_approval_clear(&a);
	free(v);
	*result = res_json;
	(void)x;
	return KMS_OK;
}

static kms_err vote(struct core *c, struct op_ctx *x, const char *verdict)
{
	const char *id = x->call->name;
	enum store_vote_result vr = STORE_VOTE_RECORDED;
	unsigned approvals = 0;
	struct store_approval a;
	struct store_vote *v = NULL;
	size_t nv = 0;
	json_t *result = NULL;
	kms_err rc;

	if (x->call->body != NULL && json_object_size(x->call->body) > 0) {
		static const char *const allowed[] = {"note", NULL};
		const char *note;
		if ((rc = kms_json_only(x->call->body, allowed)) != KMS_OK ||
		    (rc = kms_json_opt_string(x->call->body, "note", &note)) != KMS_OK)
			return rc;
	}
	if ((rc = load(c, id, &a, &v, &nv)) != KMS_OK)
		return rc;
	free(v);
	v = NULL;
	store_approval_clear(&a);
	/* a refused vote is recorded with the request it was about, too */
	x->audit_more = json_pack("{s:s,s:s}", "approval_id", id, "requested_by", a.requester);
	if (x->audit_more == NULL)
		return kms_errf(KMS_ERR_NOMEM, "approval audit");
	rc = store_approval_vote(c->st, id, x->who.id, x->who.name, verdict, core_now(), a.required, &vr, &approvals);
	x->deny_detail = true;
	if (rc != KMS_OK)
		return rc;
	json_object_set_new(x->audit_more, "approval_event",
			    json_string(vr == STORE_VOTE_EXPIRED ? "expired" : verdict[0] == 'a' ? "approved" : "denied"));
	json_object_set_new(x->audit_more, "approvals", json_integer(approvals));
	if (vr == STORE_VOTE_EXPIRED) {
		json_t *e = json_pack("{s:s,s:s,s:s}", "approval_id", id, "approval_event", "expired", "requested_by",
				      a.requester);
		core_audit_event(c, "approval.expire", CORE_SCHEDULER_PRINCIPAL, a.tenant, a.key, "allow", 0,
				 "approval request expired before its quorum was met", e);
		json_decref(e);
		return kms_errf(KMS_ERR_CONFLICT, "approval request %s has expired: it can no longer run", id);
	}
	if (vr == STORE_VOTE_EXECUTE)
		(void)execute(c, x, id, &result);
	if ((rc = load(c, id, &a, &v, &nv)) != KMS_OK) {
		json_decref(result);
		return rc;
	}
	x->data = approval_json(&a, v, nv, core_now());
	store_approval_clear(&a);
	free(v);
	if (x->data == NULL) {
		json_decref(result);
		return kms_errf(KMS_ERR_NOMEM, "approval answer");
	}
	if (result != NULL) {
		/* the final approver sees what ran; the requester reads it with approval.read */
		json_object_set_new(x->data, "executed", json_true());
		json_object_set(x->data, "result", result);
		json_object_set_new(x->audit_more, "approval_event", json_string("approved-executed"));
		json_decref(result);
	}
	return KMS_OK;
}

kms_err op_approval_approve(struct core *c, struct op_ctx *x)
{
	core_approvals_expire(c);
	return vote(c, x, "approve");
}

kms_err op_approval_deny(struct core *c, struct op_ctx *x)
{
	core_approvals_expire(c);
	return vote(c, x, "deny");
}

void core_approvals_interrupted(struct core *c, const char *executor)
{
	struct store_approval *ex = NULL;
	size_t n = 0;
	char node[65];
	const char *run = store_executor_split(executor, node);
	bool self = executor == NULL || strcmp(node, c->cl_node) == 0; /* this node's last run */
	kms_err rc;

	rc = store_approvals_interrupt(c->st, executor, core_now(), &ex, &n);
	if (rc != KMS_OK) {
		kms_error("approvals: marking interrupted requests%s%s: %s", executor ? " of run " : "",
			  executor ? executor : "", kms_err_detail(rc));
		return;
	}
	for (size_t i = 0; i < n; i++) {
		json_t *e = json_pack("{s:s,s:s,s:s,s:s}", "approval_id", ex[i].id, "approval_event", "interrupted",
				      "requested_by", ex[i].requester, "approved_operation", ex[i].operation);

		if (executor != NULL && e != NULL) {
			(void)json_object_set_new(e, "executing_node", json_string(node));
			(void)json_object_set_new(e, "executing_run", json_string(run ? run : ""));
		}
		if (self)
			kms_warn("approval %s (%s by %s) was executing when kmsd stopped: marked interrupted, not run "
				 "again; the operation's own audit record (approval_id %s) says whether it ran",
				 ex[i].id, ex[i].operation, ex[i].requester, ex[i].id);
		else
			kms_warn("approval %s (%s by %s) was executing on node %s, which stopped: marked interrupted, "
				 "not run again; the operation's own audit record (approval_id %s, node %s) says whether "
				 "it ran",
				 ex[i].id, ex[i].operation, ex[i].requester, node, ex[i].id, node);
		core_audit_event(c, "approval.interrupt", CORE_SCHEDULER_PRINCIPAL, ex[i].tenant, ex[i].key, "error",
				 0,
				 self ? "kmsd stopped while the approved request ran: not run again"
				      : "the node running the approved request stopped: not run again",
				 e);
		json_decref(e);
	}
	free(ex);
}
