/* The pure evaluator over a compiled policy document. See policy_eval.h for the order. */
#include "policy/policy_eval.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "policy/policy_doc_int.h"

static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static void addr_v6(const uint8_t a[16], struct policy_addr *out)
{
	memset(out, 0, sizeof(*out));
	if (memcmp(a, v4mapped, sizeof(v4mapped)) == 0) {
		out->family = 4;
		memcpy(out->a, a + 12, 4);
	} else {
		out->family = 6;
		memcpy(out->a, a, 16);
	}
}

int policy_addr_from_text(const char *s, struct policy_addr *out)
{
	uint8_t a[16];

	memset(out, 0, sizeof(*out));
	if (s == NULL)
		return -1;
	if (strchr(s, ':') != NULL) {
		if (inet_pton(AF_INET6, s, a) != 1)
			return -1;
		addr_v6(a, out);
		return 0;
	}
	if (inet_pton(AF_INET, s, out->a) != 1) {
		memset(out, 0, sizeof(*out));
		return -1;
	}
	out->family = 4;
	return 0;
}

int policy_addr_from_sockaddr(const struct sockaddr *sa, struct policy_addr *out)
{
	memset(out, 0, sizeof(*out));
	if (sa == NULL)
		return -1;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in4 = (const struct sockaddr_in *)(const void *)sa;
		out->family = 4;
		memcpy(out->a, &in4->sin_addr, 4);
		return 0;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
		addr_v6(in6->sin6_addr.s6_addr, out);
		return 0;
	}
	return -1;
}

bool policy_glob_match(const char *g, const char *s)
{
	const char *star = NULL, *resume = NULL;

	if (g == NULL || s == NULL)
		return false;
	while (*s) {
		if (*g == '*') {
			star = g++;
			resume = s;
		} else if (*g == '?' || *g == *s) {
			g++;
			s++;
		} else if (star != NULL) {
			g = star + 1;
			s = ++resume;
		} else {
			return false;
		}
	}
	while (*g == '*')
		g++;
	return *g == '\0';
}

static bool any_glob(const struct pd_strs *l, const char *s)
{
	for (size_t i = 0; i < l->n; i++)
		if (policy_glob_match(l->v[i], s))
			return true;
	return false;
}

static bool principal_matches(const struct pd_rule *r, const struct policy_input *in)
{
	if (r->any_principal)
		return true;
	if (in->principal != NULL && any_glob(&r->names, in->principal))
		return true;
	return in->role != NULL && in->role[0] != '\0' && any_glob(&r->roles, in->role);
}

static bool in_scope(const struct policy_input *in)
{
	if (in->tenant_id > 0)
		for (size_t i = 0; i < in->n_scope_ids; i++)
			if (in->scope_ids != NULL && in->scope_ids[i] == in->tenant_id)
				return true;
	if (in->tenant != NULL && in->tenant_id >= 0)
		for (size_t i = 0; i < in->n_scope_names; i++)
			if (in->scope_names != NULL && in->scope_names[i] != NULL &&
			    strcmp(in->scope_names[i], in->tenant) == 0)
				return true;
	return false;
}

static bool tenant_matches(const struct pd_rule *r, const struct policy_input *in)
{
	if (!r->has_tenants)
		return true;
	if (r->tenant_scope && in_scope(in))
		return true;
	return in->tenant != NULL && any_glob(&r->tenants, in->tenant);
}

static bool context_matches(const struct pd_rule *r, const struct policy_input *in)
{
	for (size_t i = 0; i < r->n_ctx; i++) {
		const struct pd_ctx_cond *cc = &r->ctx[i];
		const char *val = NULL;
		bool ok = false;
		for (size_t j = 0; j < in->n_context && in->context != NULL; j++)
			if (in->context[j].key != NULL && strcmp(in->context[j].key, cc->key) == 0) {
				val = in->context[j].value;
				break;
			}
		if (val == NULL)
			return false;
		for (size_t j = 0; j < cc->values.n && !ok; j++)
			ok = strcmp(cc->values.v[j], val) == 0;
		if (!ok)
			return false;
	}
	return true;
}

static bool time_matches(const struct pd_rule *r, int64_t now)
{
	int64_t day = now / 86400, sec;
	int minute, wd;

	if (now % 86400 < 0)
		day--; /* floor */
	sec = now - day * 86400;
	minute = (int)(sec / 60);
	wd = (int)((((day % 7) + 7) % 7 + 3) % 7); /* 1970-01-01 was a Thursday; Monday = 0 */
	if (!r->overnight)
		return minute >= r->t_start && minute < r->t_end && (r->weekdays >> wd & 1u);
	if (minute >= r->t_start)
		return r->weekdays >> wd & 1u;
	if (minute < r->t_end) /* the window opened yesterday: yesterday's weekday counts */
		return r->weekdays >> ((wd + 6) % 7) & 1u;
	return false;
}

static bool cidr_matches(const struct pd_cidr *c, const struct policy_addr *a)
{
	unsigned full = c->prefix / 8, rest = c->prefix % 8;

	if (a->family != c->family)
		return false;
	if (memcmp(a->a, c->a, full) != 0)
		return false;
	if (rest == 0)
		return true;
	return ((a->a[full] ^ c->a[full]) & (uint8_t)(0xFFu << (8 - rest))) == 0;
}

static bool source_matches(const struct pd_rule *r, const struct policy_addr *a)
{
	for (size_t i = 0; i < r->n_cidrs; i++)
		if (cidr_matches(&r->cidrs[i], a))
			return true;
	return false;
}

static bool rule_matches(const struct pd_rule *r, const struct policy_input *in)
{
	if (!(r->ops >> in->op & 1u))
		return false;
	if (!principal_matches(r, in) || !tenant_matches(r, in))
		return false;
	if (r->has_keys && (in->key == NULL || !any_glob(&r->keys, in->key)))
		return false;
	if (r->n_ctx > 0 && !context_matches(r, in))
		return false;
	if (r->has_time && !time_matches(r, in->now))
		return false;
	if (r->n_cidrs > 0 && !source_matches(r, &in->source))
		return false;
	if (r->mfa_max_age > 0 &&
	    (in->mfa_at <= 0 || in->mfa_at > in->now || in->now - in->mfa_at > r->mfa_max_age))
		return false;
	return true;
}

static void set_reason(struct policy_verdict *out, const char *s)
{
	size_t n = strlen(s);

	if (n >= sizeof(out->reason))
		n = sizeof(out->reason) - 1;
	memcpy(out->reason, s, n);
	out->reason[n] = '\0';
}

bool policy_mfa_age_may_apply(const struct policy_doc *doc, const struct policy_input *in)
{
	if (doc == NULL || in == NULL || (unsigned)in->op >= KMS_OP__COUNT)
		return false;
	for (size_t i = 0; i < doc->n_rules; i++) {
		const struct pd_rule *r = &doc->rules[i];
		if (r->mfa_max_age > 0 && (r->ops >> in->op & 1u) && principal_matches(r, in))
			return true;
	}
	return false;
}

void policy_eval(const struct policy_doc *doc, const struct policy_input *in, struct policy_verdict *out)
{
	int first_allow = -1;

	out->allow = false;
	out->require_mfa = false;
	out->require_quorum = 0;
	out->rule = out->mfa_rule = out->quorum_rule = -1;
	if (doc == NULL || in == NULL) {
		set_reason(out, "no policy: deny");
		return;
	}
	if ((unsigned)in->op >= KMS_OP__COUNT || in->op == KMS_OP_NONE) {
		set_reason(out, "invalid request: unknown operation");
		return;
	}
	for (size_t i = 0; i < doc->n_rules; i++) {
		const struct pd_rule *r = &doc->rules[i];
		if (!rule_matches(r, in))
			continue;
		if (r->deny) { /* explicit deny wins, whatever else matched */
			out->rule = (int)i;
			out->require_mfa = false;
			out->require_quorum = 0;
			out->mfa_rule = out->quorum_rule = -1;
			set_reason(out, r->reason);
			return;
		}
		if (first_allow < 0)
			first_allow = (int)i;
		if (r->require_mfa && !out->require_mfa) {
			out->require_mfa = true;
			out->mfa_rule = (int)i;
		}
		if (r->quorum > out->require_quorum) {
			out->require_quorum = r->quorum;
			out->quorum_rule = (int)i;
		}
	}
	if (first_allow < 0) {
		set_reason(out, doc->default_reason);
		return;
	}
	out->allow = true;
	out->rule = first_allow;
	if ((out->mfa_rule < 0 || out->mfa_rule == first_allow) &&
	    (out->quorum_rule < 0 || out->quorum_rule == first_allow)) {
		set_reason(out, doc->rules[first_allow].reason);
		return;
	}
	/* Requirements came from other matching rules: name them too (rare path). */
	snprintf(out->reason, sizeof(out->reason), "%s (mfa from rules[%d], quorum %u from rules[%d])",
		 doc->rules[first_allow].reason, out->mfa_rule, out->require_quorum, out->quorum_rule);
}
