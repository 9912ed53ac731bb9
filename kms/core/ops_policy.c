/* The policy document in force: read, replace (versioned, stored, audited by core_call
 * like any operation), and the choice at start-up between the stored version, the
 * configured file and the built-in default. docs/POLICY.md is the language. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/base/json.h"
#include "kms/base/log.h"
#include "kms/core/core_int.h"

static void policy_swap(struct core *c, struct policy_doc *doc, char *text)
{
	struct policy_doc *old;
	char *old_text;

	pthread_mutex_lock(&c->policy_mu);
	old = c->policy;
	old_text = c->policy_text;
	c->policy = doc;
	c->policy_text = text;
	pthread_mutex_unlock(&c->policy_mu);
	policy_doc_free(old); /* requests still holding a reference keep it alive */
	free(old_text);
}

static kms_err located(kms_err rc, const char *where, const struct policy_doc_error *e)
{
	if (rc == KMS_ERR_NOMEM)
		return rc;
	if (e->line > 0)
		return kms_errf(rc, "%s line %u column %u at %s: %s", where, e->line, e->column, e->path, e->reason);
	return kms_errf(rc, "%s at %s: %s", where, e->path, e->reason);
}

kms_err core_policy_reload(struct core *c)
{
	struct policy_doc_error perr = {0};
	struct policy_doc *doc = NULL;
	int64_t ver = 0;
	char *text = NULL;
	kms_err rc = store_policy_latest(c->st, &ver, &text);

	if (rc == KMS_OK && (rc = policy_doc_parse(text, strlen(text), &doc, &perr)) != KMS_OK)
		rc = located(KMS_ERR_CONFIG, "stored policy", &perr);
	if (rc != KMS_OK) {
		/* Fail closed: a version that cannot be read or verified here is not
		 * silently replaced by the one this node had; nothing is allowed until a
		 * good version is written (the other nodes refuse it alike). */
		static const char deny_all[] = "{\"version\": 1, \"description\": \"the stored policy is not usable "
					       "on this node\", \"rules\": [{\"name\": \"deny-all\", \"effect\": "
					       "\"deny\", \"principals\": [\"*\"], \"operations\": [\"*\"]}]}";
		struct policy_doc *none = NULL;
		char *none_text = strdup(deny_all);

		kms_error("policy version %lld written elsewhere is not usable here: %s; every request is refused "
			  "until a good version is written", (long long)ver, kms_err_detail(rc));
		if (none_text != NULL && policy_doc_parse(deny_all, sizeof(deny_all) - 1, &none, &perr) == KMS_OK)
			policy_swap(c, none, none_text);
		else
			free(none_text);
		free(text);
		return rc;
	}
	policy_swap(c, doc, text);
	kms_info("policy version %lld installed (written by another node)", (long long)ver);
	return KMS_OK;
}

static kms_err policy_init_once(struct core *c, const char *policy_file)
{
	struct policy_doc *stored = NULL, *file = NULL;
	struct policy_doc_error perr = {0};
	int64_t sver = 0;
	char *stext = NULL, *ftext = NULL;
	kms_err rc;

	rc = store_policy_latest(c->st, &sver, &stext);
	if (rc == KMS_OK) {
		rc = policy_doc_parse(stext, strlen(stext), &stored, &perr);
		if (rc != KMS_OK) {
			rc = located(KMS_ERR_CONFIG, "stored policy", &perr);
			goto out;
		}
	} else if (rc == KMS_ERR_DENIED) {
		/* Fail closed: neither the stored text nor an older version nor the default is
		 * served in place of a policy that fails its MAC (the store logged which). */
		rc = kms_errf(KMS_ERR_CONFIG, "the latest stored policy version fails its integrity MAC (written outside "
					      "kmsd?): refusing to start (docs/OPERATIONS.md \"Authority-row MACs\")");
		goto out;
	} else if (rc != KMS_ERR_NOT_FOUND) {
		goto out;
	}
	if (policy_file != NULL && *policy_file != '\0') {
		FILE *f;
		long n;
		rc = policy_doc_load_file(policy_file, &file, &perr);
		if (rc != KMS_OK) {
			rc = rc == KMS_ERR_IO ? rc : located(KMS_ERR_CONFIG, policy_file, &perr);
			goto out;
		}
		/* keep the text too, so that the API shows exactly what was loaded */
		f = fopen(policy_file, "re");
		if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0 ||
		    (ftext = calloc(1, (size_t)n + 1)) == NULL || fread(ftext, 1, (size_t)n, f) != (size_t)n) {
			if (f != NULL)
				fclose(f);
			rc = kms_errf(KMS_ERR_IO, "cannot read %s", policy_file);
			goto out;
		}
		fclose(f);
	}
	if (file != NULL && (stored == NULL || policy_doc_version(file) > sver)) {
		rc = store_policy_put(c->st, policy_doc_version(file), ftext, "policy_file", core_now());
		if (rc != KMS_OK)
			goto out;
		kms_info("policy: version %lld from %s", (long long)policy_doc_version(file), policy_file);
		policy_swap(c, file, ftext);
		file = NULL;
		ftext = NULL;
	} else if (stored != NULL) {
		if (file != NULL)
			kms_warn("policy: %s has version %lld, not newer than the stored version %lld: keeping the stored one",
				 policy_file, (long long)policy_doc_version(file), (long long)sver);
		kms_info("policy: stored version %lld", (long long)sver);
		policy_swap(c, stored, stext);
		stored = NULL;
		stext = NULL;
	} else {
		kms_info("policy: built-in default (version %lld)", (long long)policy_doc_version(c->policy));
	}
	rc = KMS_OK;
out:
	policy_doc_free(stored);
	policy_doc_free(file);
	free(stext);
	free(ftext);
	return rc;
}

kms_err core_policy_init(struct core *c, const char *policy_file)
{
	kms_err rc = policy_init_once(c, policy_file);

	/* Nodes starting together on one store race to store the file's version: the
	 * loser finds it stored (CONFLICT) and, on a second look, keeps the stored one. */
	if (rc == KMS_ERR_CONFLICT) {
		kms_info("policy: another node stored a version meanwhile: reading the store again");
		rc = policy_init_once(c, policy_file);
	}
	return rc;
}

kms_err op_policy_read(struct core *c, struct op_ctx *x)
{
	json_t *doc;
	int64_t ver;

	pthread_mutex_lock(&c->policy_mu);
	ver = policy_doc_version(c->policy);
	doc = json_loads(c->policy_text, JSON_REJECT_DUPLICATES, NULL);
	pthread_mutex_unlock(&c->policy_mu);
	if (doc == NULL)
		return kms_errf(KMS_ERR_INTERNAL, "policy text does not parse");
	x->data = json_pack("{s:I,s:o}", "version", (json_int_t)ver, "document", doc);
	return KMS_OK;
}

kms_err op_policy_write(struct core *c, struct op_ctx *x)
{
	struct policy_doc_error perr = {0};
	struct policy_doc *doc = NULL;
	char *text = NULL;
	int64_t cur, ver;
	bool locked = false;
	kms_err rc;

	if (x->call->raw_body == NULL || x->call->raw_len == 0)
		return kms_errf(KMS_ERR_INVALID, "the request body must be the policy document");
	/* Compiled from the text as sent, so that errors carry its line and column. */
	rc = policy_doc_parse(x->call->raw_body, x->call->raw_len, &doc, &perr);
	if (rc != KMS_OK)
		return located(rc == KMS_ERR_NOMEM ? rc : KMS_ERR_INVALID, "policy", &perr);
	ver = policy_doc_version(doc);
	/* Check, store and swap as one step (create_mu serialises writers), so that a
	 * slower writer of an older version cannot swap it in after a newer one. */
	pthread_mutex_lock(&c->create_mu);
	locked = true;
	pthread_mutex_lock(&c->policy_mu);
	cur = policy_doc_version(c->policy);
	pthread_mutex_unlock(&c->policy_mu);
	if (ver <= cur) {
		rc = kms_errf(KMS_ERR_CONFLICT, "policy version %lld is not newer than the current version %lld",
			      (long long)ver, (long long)cur);
		goto out;
	}
	text = strndup(x->call->raw_body, x->call->raw_len);
	if (text == NULL) {
		rc = kms_errf(KMS_ERR_NOMEM, "policy");
		goto out;
	}
	rc = store_policy_put(c->st, ver, text, x->who.name, core_now());
	if (rc != KMS_OK)
		goto out;
	policy_swap(c, doc, text);
	doc = NULL;
	text = NULL;
	snprintf(x->reason, sizeof(x->reason), "policy version %lld installed", (long long)ver);
	x->data = json_pack("{s:I,s:I}", "version", (json_int_t)ver, "previous_version", (json_int_t)cur);
out:
	if (locked)
		pthread_mutex_unlock(&c->create_mu);
	policy_doc_free(doc);
	free(text);
	return rc;
}
