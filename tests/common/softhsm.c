#include "tests/common/softhsm.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static int write_conf(const struct softhsm_token *t)
{
	FILE *fp = fopen(t->conf, "w");
	int rc;

	if (fp == NULL)
		return -1;
	fprintf(fp,
		"directories.tokendir = %s/tokens\n"
		"objectstore.backend = file\n"
		"log.level = ERROR\n"
		"slots.removable = false\n",
		t->dir);
	rc = ferror(fp) ? -1 : 0;
	if (fclose(fp) != 0)
		rc = -1;
	return rc;
}

/* Runs softhsm2-util with stdout and stderr discarded; returns its exit status or -1. */
static int run_init_token(const struct softhsm_token *t)
{
	char *const argv[] = {"softhsm2-util", "--init-token", "--free",
			      "--label",       (char *)t->label,
			      "--so-pin",      (char *)t->so_pin,
			      "--pin",	       (char *)t->user_pin,
			      NULL};
	pid_t pid;
	int status, fd;

	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		fd = open("/dev/null", O_WRONLY);
		if (fd >= 0) {
			dup2(fd, STDOUT_FILENO);
			dup2(fd, STDERR_FILENO);
		}
		execvp(argv[0], argv);
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0)
		;
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int softhsm_token_create(struct softhsm_token *t)
{
	char tokens[sizeof(t->dir) + 16];
	int rc;

	memset(t, 0, sizeof(*t));
	t->module = SOFTHSM_MODULE;
	t->label = SOFTHSM_LABEL;
	t->so_pin = SOFTHSM_SO_PIN;
	t->so_pin_len = strlen(SOFTHSM_SO_PIN);
	t->user_pin = SOFTHSM_USER_PIN;
	t->user_pin_len = strlen(SOFTHSM_USER_PIN);

	strcpy(t->dir, "/tmp/kmsd-softhsm-XXXXXX");
	if (mkdtemp(t->dir) == NULL) {
		perror("softhsm fixture: mkdtemp");
		t->dir[0] = '\0';
		return -1;
	}
	snprintf(t->conf, sizeof(t->conf), "%s/softhsm2.conf", t->dir);
	snprintf(tokens, sizeof(tokens), "%s/tokens", t->dir);
	if (mkdir(tokens, 0700) != 0 || write_conf(t) != 0) {
		perror("softhsm fixture: writing the token directory");
		return -1;
	}
	if (setenv("SOFTHSM2_CONF", t->conf, 1) != 0)
		return -1;
	rc = run_init_token(t);
	if (rc != 0) {
		fprintf(stderr, "softhsm fixture: softhsm2-util --init-token exited with %d\n",
			rc);
		return -1;
	}
	return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	if (remove(path) != 0)
		perror(path);
	return 0;
}

void softhsm_token_destroy(struct softhsm_token *t)
{
	if (t == NULL || t->dir[0] == '\0')
		return;
	(void)nftw(t->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	unsetenv("SOFTHSM2_CONF");
	t->dir[0] = '\0';
}
