// The IDE page of one workspace.
import '../common/base.css';
import '../ide/ide.css';
import { describeError } from '../common/api';
import { toastError } from '../common/toast';
import { Ide } from '../ide/app';

try {
  const ide = new Ide();
  ide.start().catch((error: unknown) => toastError(`The IDE could not start: ${describeError(error)}`));
} catch (error) {
  toastError(`The IDE could not start: ${describeError(error)}`);
}
