/* kmsctl datakey, encrypt, decrypt, rewrap: the data plane (service token).
 *
 * Plaintext never comes from argv: encrypt reads it from a file or stdin; decrypt
 * writes it as base64 (table/json) or as the raw bytes (--out FILE). Every buffer that
 * held plaintext is wiped before it is freed; JSON values are wiped by kms_json_init's
 * allocator. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kms/base/b64.h"
#include "kms/base/secret.h"
#include "kms/cli/cli.h"

#define MAX_PLAINTEXT (16u << 20) /* the server's max_body_bytes decides; this bounds memory */
#define MAX_AAD (1u << 20)
#define MAX_BATCH_FILE (16u << 20)

enum {
	O_CONTEXT = 1000,
	O_AAD_FILE,
	O_WRAPPED,
	O_BITS,
	O_IN,
	O_OUT,
	O_KEY_VERSION,
	O_BATCH,
};

/* Options every data-plane item takes: --context k=v ..., --aad-file FILE. */
struct item_opts {
	json_t *context; /* object, or NULL */
	char *aad_b64;   /* malloc'd, or NULL */
};

static void item_opts_free(struct item_opts *o)
{
	json_decref(o->context);
	if (o->aad_b64 != NULL) {
		kms_wipe(o->aad_b64, strlen(o->aad_b64));
		free(o->aad_b64);
	}
	memset(o, 0, sizeof(*o));
}

/* base64 of n bytes into malloc'd memory, or NULL. */
static char *b64_of(const unsigned char *p, size_t n)
{
	size_t cap = KMS_B64_ENC_LEN(n) + 1;
	char *s = malloc(cap);

	if (s != NULL && kms_b64_encode(p, n, s, cap) < 0) {
		free(s);
		s = NULL;
	}
	return s;
}

/* Handles --context and --aad-file; returns 1 if c was one of them, 0 if not, -1 on a
 * usage error (already printed). */
static int item_opt(struct item_opts *o, int c, const char *arg)
{
	unsigned char *buf = NULL;
	const char *eq;
	size_t len;
	char *k;

	if (c == O_CONTEXT) {
		eq = strchr(arg, '=');
		if (eq == NULL || eq == arg) {
			cli_usage_error("--context wants NAME=VALUE, not \"%s\"", arg);
			return -1;
		}
		if (o->context == NULL)
			o->context = json_object();
		k = strndup(arg, (size_t)(eq - arg));
		if (k == NULL || o->context == NULL) {
			free(k);
			cli_usage_error("out of memory");
			return -1;
		}
		if (json_object_get(o->context, k) != NULL) {
			cli_usage_error("--context %s given twice", k);
			free(k);
			return -1;
		}
		json_object_set_new(o->context, k, json_string(eq + 1));
		free(k);
		return 1;
	}
	if (c == O_AAD_FILE) {
		if (cli_read_input(arg, MAX_AAD, &buf, &len) != CLI_OK)
			return -1;
		free(o->aad_b64);
		o->aad_b64 = b64_of(buf, len);
		kms_wipe(buf, len);
		free(buf);
		if (o->aad_b64 == NULL) {
			cli_usage_error("out of memory");
			return -1;
		}
		return 1;
	}
	return 0;
}

static void item_apply(const struct item_opts *o, json_t *item)
{
	if (o->context != NULL)
		json_object_set(item, "encryption_context", o->context);
	if (o->aad_b64 != NULL)
		json_object_set_new(item, "associated_data", json_string(o->aad_b64));
}

#define ITEM_OPTIONS                                                                      \
	{"context", required_argument, NULL, O_CONTEXT},                                  \
	{"aad-file", required_argument, NULL, O_AAD_FILE}

#define ITEM_HELP                                                                         \
	"  --context NAME=VALUE   encryption context pair, bound into the ciphertext\n"      \
	"                         (repeat for more; give the same pairs to decrypt)\n"       \
	"  --aad-file FILE|-      associated data: FILE's bytes, bound likewise\n"

/* Batch table: one line per item, the value of field or "error: message". */
static const char *batch_field;

static void batch_table(const json_t *data)
{
	const json_t *results = json_object_get(data, "batch_results"), *r, *e;
	size_t i;

	json_array_foreach(results, i, r) {
		e = json_object_get(r, "error");
		if (json_is_string(e)) {
			fputs("error: ", stdout);
			cli_put_value(NULL, e);
		} else {
			cli_put_value(NULL, json_object_get(r, batch_field) ?: json_null());
		}
		fputc('\n', stdout);
	}
}

/* One call with a single item or a batch; prints the answer (also the items of a batch
 * that partly failed). */
static int data_call(const char *op, const char *variant, const char *tenant, const char *key,
		     json_t *body, void (*table)(const json_t *), const char *out_path)
{
	struct cli_client c;
	json_t *ans = NULL;
	char *path;
	int rc;

	path = variant != NULL ? cli_path(tenant, op, variant, key, NULL) : cli_path(tenant, op, key, NULL);
	if (path == NULL) {
		fprintf(stderr, "kmsctl: out of memory\n");
		rc = CLI_SERVER;
		goto out_nc;
	}
	rc = cli_connect(&c, 1);
	if (rc != CLI_OK)
		goto out_nc;
	rc = cli_call(&c, "POST", path, body, &ans);
	if (rc == CLI_OK && out_path != NULL) {
		const char *b64 = json_string_value(json_object_get(cli_data(ans), "plaintext"));
		size_t n = b64 ? strlen(b64) : 0, cap = KMS_B64_DEC_MAX(n) + 1, off = 0;
		unsigned char *pt = malloc(cap);
		long got = pt && b64 ? kms_b64_decode(b64, n, pt, cap) : -1;
		int fd = -1;

		if (got < 0) {
			fprintf(stderr, "kmsctl: the answer carries no valid plaintext\n");
			rc = CLI_SERVER;
		} else if (strcmp(out_path, "-") == 0) {
			fd = STDOUT_FILENO;
		} else if ((fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0) {
			fprintf(stderr, "kmsctl %s: %s: %s\n", cli_cmd, out_path, strerror(errno));
			rc = CLI_USAGE;
		}
		while (fd >= 0 && got >= 0 && off < (size_t)got) {
			ssize_t w = write(fd, pt + off, (size_t)got - off);

			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				fprintf(stderr, "kmsctl %s: writing %s: %s\n", cli_cmd, out_path,
					strerror(errno));
				rc = CLI_USAGE;
				break;
			}
			off += (size_t)w;
		}
		if (fd > STDERR_FILENO && close(fd) != 0 && rc == CLI_OK) {
			fprintf(stderr, "kmsctl %s: %s: %s\n", cli_cmd, out_path, strerror(errno));
			rc = CLI_USAGE;
		}
		if (pt != NULL) {
			kms_wipe(pt, cap);
			free(pt);
		}
	} else if (ans != NULL && (rc == CLI_OK || json_object_get(cli_data(ans), "batch_results") != NULL)) {
		cli_print(&c, cli_data(ans), table);
	}
	json_decref(ans);
	cli_disconnect(&c);
out_nc:
	free(path);
	return rc;
}

/* Lines of a file (or stdin), blanks skipped, each as item[field]. */
static int read_batch(const char *file, const char *field, const struct item_opts *o, json_t **out)
{
	unsigned char *buf = NULL;
	json_t *items = NULL;
	char *line, *next;
	size_t len;
	int rc = cli_read_input(file, MAX_BATCH_FILE, &buf, &len);

	if (rc != CLI_OK)
		return rc;
	items = json_array();
	for (line = (char *)buf; line != NULL && *line != '\0'; line = next) {
		char *e;
		json_t *it;

		next = strchr(line, '\n');
		if (next != NULL)
			*next++ = '\0';
		while (*line == ' ' || *line == '\t')
			line++;
		e = line + strlen(line);
		while (e > line && (e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t'))
			*--e = '\0';
		if (*line == '\0')
			continue;
		it = json_pack("{s:s}", field, line);
		if (it == NULL) {
			rc = cli_usage_error("%s: a line is not valid UTF-8", file);
			goto out;
		}
		item_apply(o, it);
		json_array_append_new(items, it);
	}
	if (json_array_size(items) == 0) {
		rc = cli_usage_error("%s: no lines", file);
		goto out;
	}
	*out = json_pack("{s:O}", "batch_input", items);
out:
	json_decref(items);
	kms_wipe(buf, len);
	free(buf);
	return rc;
}

/* The single ciphertext: the argument, or the first line of stdin ("-" or absent). */
static int ciphertext_arg(int argc, char **argv, char **out)
{
	unsigned char *buf = NULL;
	size_t len;
	char *s;
	int rc;

	if (optind + 2 < argc && strcmp(argv[optind + 2], "-") != 0) {
		*out = strdup(argv[optind + 2]);
		return *out ? CLI_OK : CLI_SERVER;
	}
	rc = cli_read_input("-", 1u << 20, &buf, &len);
	if (rc != CLI_OK)
		return rc;
	s = (char *)buf;
	s[strcspn(s, "\r\n")] = '\0';
	while (*s == ' ' || *s == '\t')
		s++;
	if (*s == '\0') {
		free(buf);
		return cli_usage_error("no ciphertext given (argument, or a line on stdin)");
	}
	*out = strdup(s);
	free(buf);
	return *out ? CLI_OK : CLI_SERVER;
}

/* ---- datakey --------------------------------------------------------------------- */

static int datakey_run(int argc, char **argv)
{
	static const struct option opts[] = {
		ITEM_OPTIONS,
		{"wrapped", no_argument, NULL, O_WRAPPED},
		{"bits", required_argument, NULL, O_BITS},
		{NULL, 0, NULL, 0},
	};
	struct item_opts io = {0};
	json_t *body = json_object();
	int c, r, wrapped = 0, rc = CLI_USAGE;
	long long bits;

	while ((c = cli_getopt(argc, argv, opts)) != -1) {
		if ((r = item_opt(&io, c, optarg)) < 0)
			goto out;
		if (r == 1)
			continue;
		if (c == O_WRAPPED) {
			wrapped = 1;
		} else if (c == O_BITS) {
			if (cli_parse_uint("--bits", optarg, 100000, &bits) != 0)
				goto out;
			json_object_set_new(body, "bits", json_integer(bits));
		} else {
			goto out;
		}
	}
	if ((rc = cli_positionals(argc, argv, 2, 2)) != CLI_OK)
		goto out;
	item_apply(&io, body);
	rc = data_call("datakey", wrapped ? "wrapped" : "plaintext", argv[optind], argv[optind + 1],
		       body, NULL, NULL);
out:
	item_opts_free(&io);
	json_decref(body);
	return rc;
}

static const struct cli_leaf datakey_leaf = {
	"datakey", "a new data key: plaintext and wrapped (or --wrapped only)",
	"TENANT KEY [--wrapped] [--bits 128|256|512] [--context NAME=VALUE]... [--aad-file FILE]",
	"Makes a random data encryption key and wraps it under KEY's latest version\n"
	"(POST /v1/TENANT/datakey/plaintext|wrapped/KEY). Prints the plaintext DEK\n"
	"(base64) and the ciphertext to store next to your data; with --wrapped only the\n"
	"ciphertext. Unwrap it later with `kmsctl decrypt` and the same context.\n"
	"\n"
	"  --wrapped              answer only the wrapped form\n"
	"  --bits N               128, 256 (default) or 512\n" ITEM_HELP
	"\n"
	"examples:\n"
	"  kmsctl datakey cardiology patient-records --context purpose=treatment\n"
	"  kmsctl datakey cardiology patient-records --wrapped --format json\n",
	datakey_run, NULL,
};

int cli_datakey(int argc, char **argv)
{
	return cli_leaf_run(&datakey_leaf, "datakey", argc, argv);
}

void cli_datakey_usage(FILE *f)
{
	cli_leaf_usage(&datakey_leaf, "datakey", f);
}

/* ---- encrypt --------------------------------------------------------------------- */

static int encrypt_run(int argc, char **argv)
{
	static const struct option opts[] = {
		ITEM_OPTIONS,
		{"in", required_argument, NULL, O_IN},
		{"key-version", required_argument, NULL, O_KEY_VERSION},
		{NULL, 0, NULL, 0},
	};
	struct item_opts io = {0};
	json_t *body = json_object();
	const char *in = "-";
	unsigned char *pt = NULL;
	char *b64 = NULL;
	size_t len = 0;
	long long v;
	int c, r, rc = CLI_USAGE;

	while ((c = cli_getopt(argc, argv, opts)) != -1) {
		if ((r = item_opt(&io, c, optarg)) < 0)
			goto out;
		if (r == 1)
			continue;
		if (c == O_IN) {
			in = optarg;
		} else if (c == O_KEY_VERSION) {
			if (cli_parse_uint("--key-version", optarg, 4294967295LL, &v) != 0)
				goto out;
			json_object_set_new(body, "key_version", json_integer(v));
		} else {
			goto out;
		}
	}
	if ((rc = cli_positionals(argc, argv, 2, 2)) != CLI_OK)
		goto out;
	rc = cli_read_input(in, MAX_PLAINTEXT, &pt, &len);
	if (rc != CLI_OK)
		goto out;
	b64 = b64_of(pt, len);
	if (b64 == NULL) {
		fprintf(stderr, "kmsctl: out of memory\n");
		rc = CLI_SERVER;
		goto out;
	}
	json_object_set_new(body, "plaintext", json_string(b64));
	item_apply(&io, body);
	rc = data_call("encrypt", NULL, argv[optind], argv[optind + 1], body, NULL, NULL);
out:
	if (pt != NULL) {
		kms_wipe(pt, len);
		free(pt);
	}
	if (b64 != NULL) {
		kms_wipe(b64, strlen(b64));
		free(b64);
	}
	item_opts_free(&io);
	json_decref(body);
	return rc;
}

static const struct cli_leaf encrypt_leaf = {
	"encrypt", "encrypt a file's bytes (or stdin) under a key",
	"TENANT KEY [--in FILE|-] [--key-version N] [--context NAME=VALUE]... [--aad-file FILE]",
	"Encrypts the bytes of FILE (default: stdin) under KEY (POST\n"
	"/v1/TENANT/encrypt/KEY) and prints the ciphertext `vault:vN:...`. The plaintext\n"
	"is never taken from the command line. The server's max_body_bytes (64 KiB by\n"
	"default) bounds the size: larger input is refused with 413.\n"
	"\n"
	"  --in FILE|-            the plaintext (default -, stdin)\n"
	"  --key-version N        a version other than the latest (older ones: 409)\n" ITEM_HELP
	"\n"
	"examples:\n"
	"  kmsctl encrypt cardiology patient-records --in note.txt --context record=mrn-0001\n"
	"  printf 'secret' | kmsctl encrypt cardiology patient-records --format json\n",
	encrypt_run, NULL,
};

int cli_encrypt(int argc, char **argv)
{
	return cli_leaf_run(&encrypt_leaf, "encrypt", argc, argv);
}

void cli_encrypt_usage(FILE *f)
{
	cli_leaf_usage(&encrypt_leaf, "encrypt", f);
}

/* ---- decrypt and rewrap ---------------------------------------------------------- */

static int unwrap_run(int argc, char **argv, const char *op)
{
	static const struct option opts[] = {
		ITEM_OPTIONS,
		{"out", required_argument, NULL, O_OUT},
		{"key-version", required_argument, NULL, O_KEY_VERSION},
		{"batch", required_argument, NULL, O_BATCH},
		{NULL, 0, NULL, 0},
	};
	int is_decrypt = strcmp(op, "decrypt") == 0;
	struct item_opts io = {0};
	json_t *body = NULL, *kv = NULL;
	const char *out_path = NULL, *batch = NULL;
	char *ct = NULL;
	long long v;
	int c, r, rc = CLI_USAGE;

	while ((c = cli_getopt(argc, argv, opts)) != -1) {
		if ((r = item_opt(&io, c, optarg)) < 0)
			goto out;
		if (r == 1)
			continue;
		if (c == O_OUT && is_decrypt) {
			out_path = optarg;
		} else if (c == O_KEY_VERSION && !is_decrypt) {
			if (cli_parse_uint("--key-version", optarg, 4294967295LL, &v) != 0)
				goto out;
			json_decref(kv);
			kv = json_integer(v);
		} else if (c == O_BATCH) {
			batch = optarg;
		} else {
			if (c > 0)
				cli_usage_error("unknown option %s", argv[optind - 1]);
			goto out;
		}
	}
	if ((rc = cli_positionals(argc, argv, 2, batch != NULL ? 2 : 3)) != CLI_OK)
		goto out;
	if (batch != NULL) {
		if (out_path != NULL) {
			rc = cli_usage_error("--out takes a single ciphertext, not --batch");
			goto out;
		}
		rc = read_batch(batch, "ciphertext", &io, &body);
		if (rc != CLI_OK)
			goto out;
		if (kv != NULL) {
			size_t i;
			json_t *it;

			json_array_foreach(json_object_get(body, "batch_input"), i, it)
				json_object_set(it, "key_version", kv);
		}
		batch_field = is_decrypt ? "plaintext" : "ciphertext";
		rc = data_call(op, NULL, argv[optind], argv[optind + 1], body, batch_table, NULL);
		goto out;
	}
	rc = ciphertext_arg(argc, argv, &ct);
	if (rc != CLI_OK)
		goto out;
	body = json_pack("{s:s}", "ciphertext", ct);
	if (body == NULL) {
		rc = cli_usage_error("the ciphertext is not valid UTF-8");
		goto out;
	}
	if (kv != NULL)
		json_object_set(body, "key_version", kv);
	item_apply(&io, body);
	rc = data_call(op, NULL, argv[optind], argv[optind + 1], body, NULL, out_path);
out:
	free(ct);
	json_decref(kv);
	json_decref(body);
	item_opts_free(&io);
	return rc;
}

static int decrypt_run(int argc, char **argv)
{
	return unwrap_run(argc, argv, "decrypt");
}

static int rewrap_run(int argc, char **argv)
{
	if (cli_rewrap_is_bulk(argc, argv))
		return cli_rewrap_bulk(argc, argv);
	return unwrap_run(argc, argv, "rewrap");
}

static const struct cli_leaf decrypt_leaf = {
	"decrypt", "decrypt a ciphertext (or a wrapped data key)",
	"TENANT KEY [CIPHERTEXT|-] [--out FILE|-] [--context NAME=VALUE]... [--aad-file FILE]\n"
	"       kmsctl decrypt TENANT KEY --batch FILE|- [--context ...] [--aad-file FILE]",
	"Decrypts CIPHERTEXT (default: the first line of stdin) with KEY (POST\n"
	"/v1/TENANT/decrypt/KEY), with the same context and associated data it was made\n"
	"with. Prints the plaintext as base64, or writes its bytes to --out.\n"
	"--batch decrypts one ciphertext per line of FILE in one call and prints one line\n"
	"per item: the base64 plaintext, or `error: message` (exit status 1 if any failed).\n"
	"\n"
	"  --out FILE|-           write the plaintext bytes to FILE (created mode 0600) or\n"
	"                         stdout, instead of printing base64\n"
	"  --batch FILE|-         one ciphertext per line\n" ITEM_HELP
	"\n"
	"examples:\n"
	"  kmsctl decrypt cardiology patient-records vault:v1:... --context purpose=treatment\n"
	"  kmsctl decrypt cardiology patient-records --out note.txt < note.ct\n",
	decrypt_run, NULL,
};

static const struct cli_leaf rewrap_leaf = {
	"rewrap", "re-encrypt a ciphertext under the key's latest version",
	"TENANT KEY [CIPHERTEXT|-] [--key-version N] [--context NAME=VALUE]... [--aad-file FILE]\n"
	"       kmsctl rewrap TENANT KEY --batch FILE|- [--key-version N] [--context ...]\n"
	"       kmsctl rewrap --tenant T --key K --in FILE|- [--out FILE] [--context ...]\n"
	"              [--batch N] [--rate R] [--state FILE] [--fail-fast]\n"
	"       kmsctl rewrap --tenant T --key K --sealed FILE... [--rate R] [--state FILE]\n"
	"              [--fail-fast]",
	"Moves CIPHERTEXT (default: the first line of stdin) to KEY's latest version\n"
	"without revealing the plaintext (POST /v1/TENANT/rewrap/KEY); give the context\n"
	"and associated data it was made with. Prints the new ciphertext.\n"
	"--batch rewraps one ciphertext per line of FILE in one call and prints one line\n"
	"per item: the new ciphertext, or `error: message` (exit status 1 if any failed).\n"
	"\n"
	"  --key-version N        the target version (default: latest; older ones: 409)\n"
	"  --batch FILE|-         one ciphertext per line\n" ITEM_HELP
	"\n"
	"examples:\n"
	"  kmsctl key rotate cardiology patient-records\n"
	"  kmsctl rewrap cardiology patient-records vault:v1:... --context purpose=treatment\n"
	"  kmsctl rewrap cardiology patient-records --batch old.txt > new.txt\n"
	"\n"
	"Bulk rewrap (--tenant/--key with --in or --sealed; docs/KMSCTL.md \"Bulk rewrap\"):\n"
	"  --in FILE|-            ciphertexts, one per line, or `ciphertext<TAB>{context\n"
	"                         JSON}`; lines below the latest version are rewrapped in\n"
	"                         batches and every line is written, in order, to --out:\n"
	"                         the new ciphertext (and the line's tab part), or the line\n"
	"                         unchanged (blank, already latest, or failed)\n"
	"  --out FILE|-           where (default stdout); FILE is written as FILE.kmsctl-partial\n"
	"                         and renamed when the input is done\n"
	"  --sealed FILE...       sealed files (kmsctl seal): the wrapped data key in each\n"
	"                         header moves to the latest version; the file is\n"
	"                         re-encrypted under the same data key beside itself and\n"
	"                         renamed over the original (old or new, never broken)\n"
	"  --context NAME=VALUE   context of the lines without a tab part (--in)\n"
	"  --batch N              items per call, 1..1000 (default 100)\n"
	"  --rate R               at most R requests per second (e.g. 20 or 0.5)\n"
	"  --state FILE           resumable: progress is recorded in FILE after each durable\n"
	"                         batch (or file); run again with the same FILE after a crash\n"
	"  --fail-fast            stop at the first item that fails\n"
	"A progress bar goes to stderr when it is a terminal. Exit status 5: the run went\n"
	"through but some items failed (each named on stderr with its line or file).\n"
	"\n"
	"  kmsctl rewrap --tenant cardiology --key patient-records --in old.txt \\\n"
	"      --out new.txt --state rewrap.state --rate 20\n"
	"  kmsctl rewrap --tenant cardiology --key patient-records --sealed scans/*.sealed\n",
	rewrap_run, NULL,
};

int cli_decrypt(int argc, char **argv)
{
	return cli_leaf_run(&decrypt_leaf, "decrypt", argc, argv);
}

void cli_decrypt_usage(FILE *f)
{
	cli_leaf_usage(&decrypt_leaf, "decrypt", f);
}

int cli_rewrap(int argc, char **argv)
{
	return cli_leaf_run(&rewrap_leaf, "rewrap", argc, argv);
}

void cli_rewrap_usage(FILE *f)
{
	cli_leaf_usage(&rewrap_leaf, "rewrap", f);
}
