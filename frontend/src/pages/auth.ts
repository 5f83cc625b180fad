// The login and register pages: one form each, errors next to the field they are about.
import '../common/base.css';
import './auth.css';
import { api, ApiError, describeError } from '../common/api';
import { pageData, platformUrl, safeNext } from '../common/config';
import { h } from '../common/dom';

interface Field {
  name: string;
  label: string;
  type: string;
  autocomplete: string;
  hint?: string;
  required?: boolean;
}

const USERNAME = /^[a-z0-9_.-]{3,32}$/i;

class AuthForm {
  readonly form: HTMLFormElement;
  readonly inputs = new Map<string, HTMLInputElement>();
  private readonly errors = new Map<string, HTMLElement>();
  private readonly formError = h('div', { class: 'form-error', role: 'alert', id: 'form-error' });
  readonly submit: HTMLButtonElement;

  constructor(fields: Field[], submitLabel: string) {
    this.submit = h('button', { type: 'submit', class: 'button primary', id: 'submit' }, submitLabel);
    this.form = h('form', { novalidate: true }, this.formError);
    for (const field of fields) {
      const id = `field-${field.name}`;
      const input = h('input', {
        id, name: field.name, type: field.type, autocomplete: field.autocomplete,
        'aria-describedby': `${id}-error`, required: field.required ?? true,
      });
      const error = h('div', { class: 'field-error', id: `${id}-error` });
      input.addEventListener('input', () => this.setFieldError(field.name, ''));
      this.inputs.set(field.name, input);
      this.errors.set(field.name, error);
      this.form.append(h('div', { class: 'field' },
        h('label', { for: id }, field.label), input,
        field.hint ? h('div', { class: 'hint' }, field.hint) : null, error));
    }
    this.form.append(this.submit);
  }

  value(name: string): string {
    return this.inputs.get(name)?.value ?? '';
  }

  setFieldError(name: string, message: string): void {
    const error = this.errors.get(name);
    const input = this.inputs.get(name);
    if (!error || !input) return;
    error.textContent = message;
    input.setAttribute('aria-invalid', message ? 'true' : 'false');
  }

  setFormError(message: string): void {
    this.formError.textContent = message;
  }

  clearErrors(): void {
    this.setFormError('');
    for (const name of this.inputs.keys()) this.setFieldError(name, '');
  }

  /** Put a server message under the field it names ("username must be ..."), else on top. */
  showServerError(error: unknown, fieldOf: (e: ApiError) => string | null): void {
    if (error instanceof ApiError) {
      const field = fieldOf(error);
      if (field !== null && this.inputs.has(field)) {
        this.setFieldError(field, capitalise(error.message));
        this.inputs.get(field)?.focus();
        return;
      }
    }
    this.setFormError(describeError(error));
  }

  focusFirstInvalid(): void {
    for (const input of this.inputs.values()) {
      if (input.getAttribute('aria-invalid') === 'true') {
        input.focus();
        return;
      }
    }
  }
}

function capitalise(text: string): string {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/** The field a validation message is about: the platform's messages start with its name. */
function fieldNamed(error: ApiError): string | null {
  if (error.status === 409) return 'username';
  const match = /^(username|password|email)\b/.exec(error.message);
  return match?.[1] ?? null;
}

function nextUrl(): string {
  return safeNext(new URLSearchParams(location.search).get('next')) ?? platformUrl('workspaces');
}

function page(title: string, form: AuthForm, switcher: HTMLElement | null): void {
  document.title = `${title} · Platform`;
  const card = h('main', { class: 'auth-card' },
    h('div', { class: 'brand' }, 'Code execution platform'), h('h1', {}, title), form.form, switcher);
  document.body.append(h('div', { class: 'auth' }, card));
  form.inputs.values().next().value?.focus();
}

function login(): void {
  const form = new AuthForm([
    { name: 'username', label: 'Username', type: 'text', autocomplete: 'username' },
    { name: 'password', label: 'Password', type: 'password', autocomplete: 'current-password' },
  ], 'Log in');
  let blockedUntil = 0;
  let countdown: number | undefined;
  const showBlocked = (): void => {
    const left = Math.ceil((blockedUntil - Date.now()) / 1000);
    if (left > 0) {
      form.setFormError(`Too many failed attempts: try again in ${left} s.`);
      form.submit.disabled = true;
    } else {
      window.clearInterval(countdown);
      form.setFormError('');
      form.submit.disabled = false;
    }
  };
  form.form.addEventListener('submit', (event) => {
    event.preventDefault();
    form.clearErrors();
    if (!form.value('username')) form.setFieldError('username', 'Enter your username.');
    if (!form.value('password')) form.setFieldError('password', 'Enter your password.');
    if (!form.value('username') || !form.value('password')) {
      form.focusFirstInvalid();
      return;
    }
    form.submit.disabled = true;
    api('POST', '/api/accounts/login', { username: form.value('username'), password: form.value('password') })
      .then(() => location.assign(nextUrl()))
      .catch((error: unknown) => {
        form.submit.disabled = false;
        if (error instanceof ApiError && error.status === 429) {
          blockedUntil = Date.now() + (error.retryAfter ?? 60) * 1000;
          showBlocked();
          window.clearInterval(countdown);
          countdown = window.setInterval(showBlocked, 1000);
          return;
        }
        if (error instanceof ApiError && error.status === 401) {
          form.setFormError('Invalid username or password.');
          form.inputs.get('password')?.select();
          return;
        }
        form.showServerError(error, () => null);
      });
  });
  const data = pageData();
  const registerLink = h('a', { href: platformUrl('register') + location.search, id: 'to-register' }, 'Create an account');
  page('Log in', form, data.allowRegistration === false ? null : h('p', { class: 'auth-switch' }, 'New here? ', registerLink));
}

function register(): void {
  if (pageData().allowRegistration === false) {
    document.title = 'Registration closed · Platform';
    document.body.append(h('div', { class: 'auth' }, h('main', { class: 'auth-card' },
      h('h1', {}, 'Registration is closed'),
      h('p', { id: 'registration-closed' }, 'Ask an administrator for an account.'),
      h('p', {}, h('a', { href: platformUrl('login') + location.search, id: 'to-login' }, 'Log in')))));
    return;
  }
  const form = new AuthForm([
    { name: 'username', label: 'Username', type: 'text', autocomplete: 'username',
      hint: '3-32 characters: letters, digits, _ . -' },
    { name: 'email', label: 'Email (optional)', type: 'email', autocomplete: 'email', required: false },
    { name: 'password', label: 'Password', type: 'password', autocomplete: 'new-password', hint: 'At least 8 characters.' },
    { name: 'confirm', label: 'Repeat the password', type: 'password', autocomplete: 'new-password' },
  ], 'Create account');
  form.form.addEventListener('submit', (event) => {
    event.preventDefault();
    form.clearErrors();
    const username = form.value('username').trim();
    const password = form.value('password');
    if (!USERNAME.test(username)) {
      form.setFieldError('username', 'Use 3-32 characters: letters, digits, _ . and -.');
    }
    if (password.length < 8) form.setFieldError('password', 'Use at least 8 characters.');
    else if (new TextEncoder().encode(password).length > 72) form.setFieldError('password', 'Use at most 72 bytes.');
    if (form.value('confirm') !== password) form.setFieldError('confirm', 'The passwords differ.');
    if ([...form.inputs.values()].some((i) => i.getAttribute('aria-invalid') === 'true')) {
      form.focusFirstInvalid();
      return;
    }
    form.submit.disabled = true;
    const email = form.value('email').trim();
    api('POST', '/api/accounts/register', { username, password, ...(email ? { email } : {}) })
      .then(() => api('POST', '/api/accounts/login', { username, password }))
      .then(() => location.assign(nextUrl()))
      .catch((error: unknown) => {
        form.submit.disabled = false;
        form.showServerError(error, fieldNamed);
      });
  });
  page('Create an account', form,
    h('p', { class: 'auth-switch' }, 'Already registered? ',
      h('a', { href: platformUrl('login') + location.search, id: 'to-login' }, 'Log in')));
}

if (pageData().page === 'register') register();
else login();
